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
    "noise": "noise",  # nest-ssl noise bank NOISE_MANIFEST OUT_DIR
    "train": "train",  # nest-ssl train [--config-path DIR] [--config-name NAME] key=value ...
    "export": "export",  # nest-ssl export CKPT --to nemo OUT.nemo [--encoder-only]
    "export-asr": "export_asr",  # nest-ssl export-asr RUN_DIR|step-N.ckpt OUT.nemo [--avg N]
    "import-nemo": "import_nemo",  # nest-ssl import-nemo IN.nemo OUT.ckpt
    "extract": "extract",  # nest-ssl extract CKPT CUTS OUT_DIR --layer N
    "plot": "plot",  # nest-ssl plot EXP_DIR
    "evaluate": "evaluate",  # nest-ssl evaluate --model M --train-cuts --dev-cuts --test-cuts --out-dir eval
    "finetune": "finetune",  # nest-ssl finetune --train-manifest T --out-dir D [--init-from CKPT] [key=value ...]
    "decode": "decode",  # nest-ssl decode --model D [--avg N] --test NAME=MANIFEST --out-dir O [--lm ARPA]
    "transcribe": "transcribe",  # nest-ssl transcribe MODEL AUDIO... [--lm ARPA]
    "tune-batch": "tune_batch",  # nest-ssl tune-batch [--config-name NAME] --bins 2.5,5,10 --memory-gb 70
}


def build_parser() -> argparse.ArgumentParser:
    from nest_ssl import __version__

    parser = argparse.ArgumentParser(prog="nest-ssl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nest-ssl {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a user error too (anywhere on the line; or NEST_SSL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parser._nest_subparsers = {}  # name -> (sub-parser, module), for commands that take intermixed arguments
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
        parser._nest_subparsers[name] = (p, module)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Top-level parsing; a command whose module sets INTERMIXED (train: Hydra's `key=value` overrides and options
    in any order) parses its own arguments with parse_intermixed_args."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub, module = parser._nest_subparsers.get(args.command, (None, None))
        if sub is None or not getattr(module, "INTERMIXED", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        rest = argv[argv.index(args.command) + 1:]
        args = sub.parse_intermixed_args(rest, argparse.Namespace(command=args.command, debug=args.debug))
    return args


def _dispatch(argv: list[str]) -> int:
    args = parse_args(argv)
    return int(args._run(args) or 0)


def main(argv=None) -> int:
    """`nest-ssl COMMAND ...`: user errors end in one line `nest-ssl: error: ...` and exit code 2 (see guard.py)."""
    from nest_ssl.cli.guard import run_guarded

    return run_guarded(_dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
