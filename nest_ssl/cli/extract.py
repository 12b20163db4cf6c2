"""`nest-ssl extract CKPT CUTS OUT_DIR --layer N`: encoder representations as Lhotse features."""

from __future__ import annotations

HELP = "write encoder representations (one layer) of every cut as Lhotse features with a CutSet manifest"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="our .ckpt, an imported one, or a NeMo .nemo")
    parser.add_argument("cuts", help="Lhotse CutSet (.jsonl.gz) or NeMo manifest (.json)")
    parser.add_argument("out_dir", help="writes OUT_DIR/cuts.jsonl.gz and the feature storage")
    parser.add_argument("--layer", type=int, default=-1,
                        help="0: encoder input, 1..N: output of Conformer layer N, -1: encoder output (default)")
    parser.add_argument("--storage", choices=["lilcom_chunky", "numpy_files"], default="numpy_files",
                        help="numpy_files (default): exact .npy per cut; lilcom_chunky: one compressed file "
                             "(lossy, ~1e-3; needs `pip install lilcom`)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def run(args) -> int:
    """User errors (ExportError, a bad --layer or storage, a missing file) propagate to the guard: exit 2."""
    from nest_ssl.cli.guard import as_user_errors
    from nest_ssl.export.extract import extract

    with as_user_errors(ValueError, FileNotFoundError):
        out = extract(args.checkpoint, args.cuts, args.out_dir, layer=args.layer, storage=args.storage,
                      device=args.device)
    print(out)
    return 0
