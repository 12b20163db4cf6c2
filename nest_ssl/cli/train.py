"""`nest-ssl train [--config-path DIR] [--config-name NAME] [--cfg job] key=value ...`: NeMo's training command line.

As with Hydra, options and overrides come in any order (INTERMIXED), and `--cfg job` prints the resolved config
instead of training. User errors propagate to the entry point's guard (nest_ssl/cli/guard.py): one line, exit 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = "train (or resume) NEST pretraining: [--config-path DIR] [--config-name NAME] [--cfg job] key=value ..."

INTERMIXED = True  # Hydra allows options between the overrides


def add_arguments(parser) -> None:
    parser.add_argument("--config-path", "--config_path", "-cp", dest="config_path", default=None,
                        help="folder of the yaml configs (default: the configs shipped in the package, nest_ssl/conf)")
    parser.add_argument("--config-name", "--config_name", "-cn", dest="config_name", default="nest_fast-conformer",
                        help="config file name without .yaml (default: nest_fast-conformer)")
    parser.add_argument("--cfg", "-c", dest="cfg", choices=["job", "all", "hydra"], default=None,
                        help="print the resolved config (with the overrides) and exit, as Hydra's --cfg job does")
    parser.add_argument("--resolve", action="store_true",
                        help="accepted for Hydra compatibility: --cfg always prints the config resolved")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="NeMo/Hydra overrides: a.b=c, +a.new=c, ++a.b=c, ~a.b")


def parse_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Options and overrides in any order, as Hydra parses them."""
    return parser.parse_intermixed_args(argv)


def run(args) -> int:
    from nest_ssl.config import ConfigError, load_config

    cfg = load_config(args.config_path, args.config_name, args.overrides)
    if args.cfg is not None:
        if args.cfg == "hydra":
            raise ConfigError("--cfg hydra: nest-ssl has no hydra section (it does not run Hydra); use --cfg job")
        from omegaconf import OmegaConf

        sys.stdout.write(OmegaConf.to_yaml(cfg, resolve=True))
        return 0

    from nest_ssl.train import run as train_run
    from nest_ssl.train.run_status import exit_code_for
    from nest_ssl.train.trainer import NonFiniteLossError

    command_line = " ".join(shlex.quote(a) for a in sys.argv)
    try:
        result = train_run(cfg, command_line=command_line)
    except NonFiniteLossError as err:
        print(f"nest-ssl train: stopped: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("nest-ssl train: interrupted; run the same command again to continue from the last checkpoint",
              file=sys.stderr)
        return 130
    # EXIT_RESUMABLE (75) after a preemption signal or max_time_per_run: the same command continues the run
    return exit_code_for(result.stop_reason)
