"""`nest-ssl import-nemo IN.nemo OUT.ckpt`: a NeMo NEST model as our checkpoint."""

from __future__ import annotations

HELP = "import a NeMo NEST .nemo (e.g. ssl_en_nest_large_v1.0) as a checkpoint for init_from_ptl_ckpt / extract"


def add_arguments(parser) -> None:
    parser.add_argument("nemo", help="IN.nemo written by NeMo (EncDecDenoiseMaskedTokenPredModel)")
    parser.add_argument("output", help="OUT.ckpt")


def run(args) -> int:
    """User errors (unreadable, foreign or damaged archive, an unusable output) propagate to the guard: exit 2."""
    from nest_ssl.errors import check_output_file
    from nest_ssl.export.nemo import import_nemo
    from nest_ssl.checkpoint import check_checkpoint_file

    check_checkpoint_file(args.nemo, "IN.nemo")
    check_output_file(args.output, "OUT.ckpt")
    out = import_nemo(args.nemo, args.output)
    print(out)
    return 0
