"""`nest-ssl export-asr MODEL OUT.nemo [--avg N] [--tokenizer DIR]`: a fine-tuned model as a NeMo 2.7.3 ASR `.nemo`:
CTC as EncDecCTCModelBPE (its SentencePiece tokenizer inside) or EncDecCTCModel (characters), RNN-T as
EncDecRNNTBPEModel or EncDecRNNTModel."""

from __future__ import annotations

HELP = "export a fine-tuned CTC or RNN-T model as a NeMo ASR .nemo (EncDecCTCModelBPE, EncDecRNNTBPEModel, ...)"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a step-N.ckpt of `nest-ssl finetune` or its --out-dir (its last checkpoint)")
    parser.add_argument("output", help="OUT.nemo")
    parser.add_argument("--avg", type=int, default=1, help="export the average of the last N checkpoints")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the run's tokenizer/)")


def run(args) -> int:
    """User errors (no such run, a foreign checkpoint, an unusable output path) go to the guard: one line, exit 2."""
    from pathlib import Path

    from nest_ssl.asr.errors import ASRError
    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.asr.heads import head_of
    from nest_ssl.asr.nemo_archive import is_nemo_archive
    from nest_ssl.asr.nemo_ctc import export_ctc
    from nest_ssl.errors import check_output_file

    if not args.output.endswith(".nemo"):
        raise ASRError(f"OUT {args.output}: name the output *.nemo (NeMo's restore_from reads .nemo archives)")
    if args.avg < 1:
        raise ASRError(f"--avg {args.avg}: give 1 or more")
    if is_nemo_archive(Path(args.model)):
        raise ASRError(f"MODEL {args.model}: is already a .nemo archive; give a `nest-ssl finetune` run folder or "
                       "step-N.ckpt")
    check_output_file(args.output, "OUT")
    model, tok, paths = load_asr(args.model, args.avg, args.tokenizer)
    if head_of(model.cfg) == "rnnt":
        from nest_ssl.asr.nemo_rnnt import export_rnnt

        print(export_rnnt(model, tok, args.output))
    else:
        print(export_ctc(model, tok, args.output))
    return 0
