"""`nest-ssl plot EXP_DIR`: a PNG of the loss and learning-rate curves of a run."""

from __future__ import annotations

HELP = "plot train/val loss and learning rate of a run (EXP_DIR: the run folder or any folder above it)"


def add_arguments(parser) -> None:
    parser.add_argument("exp_dir", help="a run folder (with metrics.jsonl) or a folder above one")
    parser.add_argument("-o", "--output", default=None, help="PNG path (default: EXP_DIR/curves.png)")


def run(args) -> int:
    """User errors (no run folder, no metrics yet) propagate to the guard: one line, exit 2."""
    from nest_ssl.cli.guard import as_user_errors
    from nest_ssl.train.plot import plot_run

    with as_user_errors(ValueError, FileNotFoundError):
        out = plot_run(args.exp_dir, args.output)
    print(out)
    return 0
