"""`nest-ssl export CKPT --to nemo OUT.nemo [--encoder-only]`: a checkpoint for NeMo."""

from __future__ import annotations

import sys

HELP = "export a checkpoint to NeMo: --to nemo OUT.nemo (restore_from) or --encoder-only OUT.ckpt (init_from_ptl_ckpt)"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="our checkpoint (.ckpt), e.g. <run>/checkpoints/*-last.ckpt")
    parser.add_argument("--to", choices=["nemo"], default="nemo", help="target toolkit (default: nemo)")
    parser.add_argument("output", help="OUT.nemo; with --encoder-only a .ckpt")
    parser.add_argument("--encoder-only", action="store_true",
                        help="write only the encoder weights (encoder.*) as a Lightning-style .ckpt, which NeMo's "
                             "init_from_ptl_ckpt (and ours) loads into a downstream model")


def run(args) -> int:
    from nest_ssl.export.nemo import ExportError, export_encoder, export_nemo
    from nest_ssl.train.checkpoint import CorruptCheckpointError

    try:
        if args.encoder_only:
            if args.output.endswith(".nemo"):
                print("nest-ssl export: --encoder-only writes a .ckpt for init_from_ptl_ckpt, not a .nemo archive; "
                      "name the output *.ckpt (a full .nemo serves downstream init via init_from_nemo_model with "
                      "include: [encoder])", file=sys.stderr)
                return 2
            out = export_encoder(args.checkpoint, args.output)
        else:
            out = export_nemo(args.checkpoint, args.output)
    except (ExportError, CorruptCheckpointError, FileNotFoundError) as err:
        print(f"nest-ssl export: error: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0
