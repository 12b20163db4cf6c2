"""The `nest-ssl` command: one sub-command per module in this package.

Each sub-command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`; heavy imports
(torch, lhotse) happen inside `run` so that `nest-ssl --help` is instant.
"""

import argparse
import importlib
import sys

# sub-command name -> module in nest_ssl.cli
COMMANDS = {
    "manifest": "manifest",  # nest-ssl manifest from-nemo IN.json OUT.jsonl.gz
    "cuts": "cuts",  # nest-ssl cuts windows|estimate-bins ...
    "shar": "shar",  # nest-ssl shar export CUTS OUT_DIR --shard-size N
    "prepare": "prepare",  # nest-ssl prepare librilight|noise ...
    "train": "train",  # nest-ssl train [--config-path DIR] [--config-name NAME] key=value ...
    "export": "export",  # nest-ssl export CKPT --to nemo OUT.nemo [--encoder-only]
    "import-nemo": "import_nemo",  # nest-ssl import-nemo IN.nemo OUT.ckpt
    "extract": "extract",  # nest-ssl extract CKPT CUTS OUT_DIR --layer N
    "plot": "plot",  # nest-ssl plot EXP_DIR
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nest-ssl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"nest_ssl.cli.{module_name}")
        except ModuleNotFoundError as err:
            if err.name != f"nest_ssl.cli.{module_name}":
                raise
            continue  # sub-command not built yet
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
