#!/usr/bin/env python3
"""NEST pretraining, NeMo's command line (examples/asr/speech_pretraining/masked_token_pred_pretrain.py):

    python train.py [--config-path DIR] [--config-name NAME] [--cfg job] [--debug] key=value ...
    torchrun --nproc-per-node=8 train.py trainer.devices=8 ...          # or let trainer.devices=8 start them

The same as `nest-ssl train ...`; see docs/training.md. Default config: nest_fast-conformer.yaml of the package's
configs (nest_ssl/conf).
"""

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a checkout without installing

from nest_ssl.cli import train as train_cli  # noqa: E402
from nest_ssl.cli.guard import run_guarded  # noqa: E402


def _main(argv: list) -> int:
    parser = argparse.ArgumentParser(prog="train.py", description=train_cli.HELP)
    train_cli.add_arguments(parser)
    args = train_cli.parse_args(parser, argv)
    return train_cli.run(args)


def main(argv=None) -> int:
    """User errors: one line `nest-ssl: error: ...`, exit 2 (--debug or NEST_SSL_DEBUG=1: with the traceback)."""
    return run_guarded(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
