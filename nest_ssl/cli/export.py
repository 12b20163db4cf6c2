"""`nest-ssl export CKPT --to nemo OUT.nemo [--encoder-only]`: a checkpoint for NeMo."""

from __future__ import annotations

HELP = "export a checkpoint to NeMo: --to nemo OUT.nemo (restore_from) or --encoder-only OUT.ckpt (init_from_ptl_ckpt)"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="our checkpoint (.ckpt), e.g. <run>/checkpoints/*-last.ckpt, or a .nemo")
    parser.add_argument("--to", choices=["nemo"], default="nemo", help="target toolkit (default: nemo)")
    parser.add_argument("output", help="OUT.nemo; with --encoder-only a .ckpt")
    parser.add_argument("--encoder-only", action="store_true",
                        help="write only the encoder weights (encoder.*) as a Lightning-style .ckpt, which NeMo's "
                             "init_from_ptl_ckpt (and ours) loads into a downstream model")


def run(args) -> int:
    """User errors (unreadable or foreign input, an unusable output path) propagate to the guard: one line, exit 2."""
    from nest_ssl.errors import UserError, check_output_file
    from nest_ssl.export.nemo import export_encoder, export_nemo
    from nest_ssl.checkpoint import check_checkpoint_file

    if args.encoder_only and args.output.endswith(".nemo"):
        raise UserError(f"--encoder-only writes a .ckpt for init_from_ptl_ckpt, not a .nemo archive; name the output "
                        f"*.ckpt instead of {args.output} (a full .nemo serves downstream init via "
                        "init_from_nemo_model with include: [encoder])")
    if not args.checkpoint.endswith(".nemo"):  # a .nemo is checked as an archive when it is read
        check_checkpoint_file(args.checkpoint, "CKPT")
    check_output_file(args.output, "OUT")
    try:
        out = (export_encoder(args.checkpoint, args.output) if args.encoder_only
               else export_nemo(args.checkpoint, args.output))
    except UserError:
        _refuse_asr_checkpoint(args.checkpoint)
        raise
    print(out)
    return 0


def _refuse_asr_checkpoint(path: str) -> None:
    """A fine-tuned ASR checkpoint given to `export` (NEST only): point to `export-asr`, not 'not a NEST model'."""
    from nest_ssl.asr.model_io import KINDS
    from nest_ssl.checkpoint import load_checkpoint
    from nest_ssl.errors import UserError

    try:
        kind = load_checkpoint(path).get("kind")
    except Exception:  # only a better hint is at stake: the export's own error is raised as it was
        return
    if kind in KINDS.values():
        raise UserError(f"CKPT {path}: an ASR model of `nest-ssl finetune`; export it with `nest-ssl export-asr "
                        f"{path} OUT.nemo`")
