"""`nest-ssl plot`: loss and learning-rate curves of a run as a PNG, from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from nest_ssl.errors import missing_extra
from nest_ssl.train.loggers import METRICS_FILE, read_metrics, series


def find_run_dirs(exp_dir: Path) -> list[Path]:
    """The run folders (those with metrics.jsonl) at or below exp_dir, newest last."""
    if (exp_dir / METRICS_FILE).exists():
        return [exp_dir]
    runs = [p.parent for p in exp_dir.rglob(METRICS_FILE)]
    return sorted(runs, key=lambda p: (p / METRICS_FILE).stat().st_mtime)


def plot_run(exp_dir: str | Path, output: str | Path | None = None) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise missing_extra("matplotlib", "plot", "nest-ssl plot") from None

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    exp_dir = Path(exp_dir)
    if not exp_dir.exists():
        raise FileNotFoundError(f"{exp_dir} does not exist")
    runs = find_run_dirs(exp_dir)
    if not runs:
        raise FileNotFoundError(f"no {METRICS_FILE} under {exp_dir}: is it a nest-ssl run folder?")
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    plotted = 0
    for run in runs:
        rows = read_metrics(run)
        label = run.relative_to(exp_dir).as_posix() if run != exp_dir else run.name
        prefix = f"{label}: " if len(runs) > 1 else ""
        for key, style in (("train_loss", "-"), ("val_loss", "o-")):
            s = series(rows, key)
            if s:
                steps = sorted(s)
                ax_loss.plot(steps, [s[k] for k in steps], style, label=prefix + key, markersize=3)
                plotted += 1
        lr = series(rows, "learning_rate")
        if lr:
            steps = sorted(lr)
            ax_lr.plot(steps, [lr[k] for k in steps], label=prefix + "learning_rate")
    if plotted == 0:
        raise ValueError(f"{exp_dir}: the metrics hold no train_loss/val_loss yet")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"NEST pretraining: {exp_dir}")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if ax_lr.lines:
        ax_lr.legend()
    fig.tight_layout()
    out = Path(output) if output else exp_dir / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
