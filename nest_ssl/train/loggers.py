"""What a run writes for people to read: text logs, TensorBoard scalars, metrics.jsonl and the progress bar.

Only global rank 0 writes TensorBoard events, metrics.jsonl and the progress bar. Text log files follow NeMo's
names (`nemo_log_globalrank-R_localrank-L.txt`): every rank writes its own unless exp_manager's
log_global_rank_0_only / log_local_rank_0_only say otherwise. metrics.jsonl holds the same scalars as TensorBoard,
one JSON object per logging step; `nest-ssl plot` and the tests read it without TensorBoard.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("nest_ssl.train")

METRICS_FILE = "metrics.jsonl"
_FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s"


def setup_text_logging(log_dir: Path | None, rank: int, local_rank: int, write_file: bool, console: bool) -> None:
    """Console logging for rank 0 (warnings only elsewhere) and, where asked, NeMo's per-rank log file."""
    root = logging.getLogger("nest_ssl")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_nest_ssl", False):
            root.removeHandler(h)
            h.close()
    stream = logging.StreamHandler(sys.stderr)
    stream.setLevel(logging.INFO if console else logging.WARNING)
    prefix = f"[rank {rank}] " if rank else ""
    stream.setFormatter(logging.Formatter(prefix + _FORMAT, "%H:%M:%S"))
    stream._nest_ssl = True  # type: ignore[attr-defined]
    root.addHandler(stream)
    if write_file and log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_dir / f"nemo_log_globalrank-{rank}_localrank-{local_rank}.txt", encoding="utf-8")
        fh.setLevel(logging.INFO)
        fh.setFormatter(logging.Formatter(_FORMAT))
        fh._nest_ssl = True  # type: ignore[attr-defined]
        root.addHandler(fh)
    root.propagate = False


class MetricsWriter:
    """TensorBoard (when exp_manager.create_tensorboard_logger) and metrics.jsonl, on global rank 0 only."""

    def __init__(self, log_dir: Path | None, enabled: bool, tensorboard: bool, summary_writer_kwargs: dict):
        self.enabled = enabled and log_dir is not None
        self.tb = None
        self.file = None
        if not self.enabled:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(log_dir), **summary_writer_kwargs)
        self.file = open(log_dir / METRICS_FILE, "a", encoding="utf-8")

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, step)
        row = {"step": int(step), "time": round(time.time(), 3)}
        # JSON has no NaN/Infinity: write them as strings so the row stays valid JSON.
        row.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.file is not None:
            self.file.close()
            self.file = None


def read_metrics(log_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl (every run that wrote into log_dir, in order); a torn last line is ignored."""
    path = Path(log_dir) / METRICS_FILE
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves half a line
        rows.append({k: (float(v) if isinstance(v, str) and k != "event" else v) for k, v in row.items()})
    return rows


def series(rows: list[dict[str, Any]], key: str) -> dict[int, float]:
    """step -> value of one metric; where a resumed run re-logged a step, its (later) value wins."""
    out: dict[int, float] = {}
    for row in rows:
        if key in row:
            out[int(row["step"])] = row[key]
    return out


class ProgressBar:
    """tqdm bar over optimizer steps: step, loss, masked accuracy, learning rate, audio hours/s, and time left."""

    def __init__(self, enabled: bool, total: int | None, initial: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                smoothing=0.1,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
                if total
                else None,
            )

    def update(self, step: int, loss: float | None, lr: float, audio_hours_per_s: float | None,
               acc: float | None = None) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        post = {}
        if loss is not None:
            post["loss"] = f"{loss:.4f}"
        if acc is not None:
            post["acc"] = f"{acc:.3f}"  # masked-token top-1 accuracy of the step
        post["lr"] = f"{lr:.3e}"
        if audio_hours_per_s is not None:
            post["audio_h/s"] = f"{audio_hours_per_s:.3g}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
