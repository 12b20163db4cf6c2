"""`nest-ssl train [--config-path DIR] [--config-name NAME] key=value ...`: NeMo's training command line."""

from __future__ import annotations

import shlex
import sys

HELP = "train (or resume) NEST pretraining: [--config-path DIR] [--config-name NAME] key=value ..."


def add_arguments(parser) -> None:
    parser.add_argument("--config-path", "--config_path", dest="config_path", default=None,
                        help="folder of the yaml configs (default: recipes/nest/conf of nest-ssl)")
    parser.add_argument("--config-name", "--config_name", dest="config_name", default="nest_fast-conformer",
                        help="config file name without .yaml (default: nest_fast-conformer)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="NeMo/Hydra overrides: a.b=c, +a.new=c, ++a.b=c, ~a.b")


def run(args) -> int:
    from nest_ssl.config import ConfigError, load_config
    from nest_ssl.train.run import ResumeError
    from nest_ssl.train.trainer import NonFiniteLossError

    command_line = " ".join(shlex.quote(a) for a in sys.argv)
    try:
        cfg = load_config(args.config_path, args.config_name, args.overrides)
        from nest_ssl.train import run as train_run

        train_run(cfg, command_line=command_line)
    except (ConfigError, ResumeError) as err:
        print(f"nest-ssl train: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"nest-ssl train: stopped: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("nest-ssl train: interrupted; run the same command again to continue from the last checkpoint",
              file=sys.stderr)
        return 130
    return 0
