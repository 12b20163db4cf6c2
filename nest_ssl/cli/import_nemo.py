"""`nest-ssl import-nemo IN.nemo OUT.ckpt`: a NeMo NEST model as our checkpoint."""

from __future__ import annotations

import sys

HELP = "import a NeMo NEST .nemo (e.g. ssl_en_nest_large_v1.0) as a checkpoint for init_from_ptl_ckpt / extract"


def add_arguments(parser) -> None:
    parser.add_argument("nemo", help="IN.nemo written by NeMo (EncDecDenoiseMaskedTokenPredModel)")
    parser.add_argument("output", help="OUT.ckpt")


def run(args) -> int:
    from nest_ssl.config import ConfigError
    from nest_ssl.export.nemo import ExportError, import_nemo

    try:
        out = import_nemo(args.nemo, args.output)
    except (ExportError, ConfigError, FileNotFoundError, RuntimeError) as err:
        print(f"nest-ssl import-nemo: error: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0
