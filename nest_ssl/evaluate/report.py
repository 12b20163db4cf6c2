"""Results: the row list (results.json), the printed tables, and the layer-weight figure (layer_weights.png).

A row is {"task", "model", "seed", "metric", "value", "higher_is_better"}. `model` is "pretrained", "random_init"
or "fbank" (and "majority" for the majority-class rate of a classification task); `seed` is the random
initialisation's seed for random_init and the probe's seed otherwise (null for majority). Main tasks are phone,
speaker, asr and finetune; per-layer phone probes are rows of task "phone_layer<i>" (i = 0 the encoder's input after
subsampling, i = n the last Conformer layer) and the majority rate is task "phone_majority" / "speaker_majority".
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Iterable, Sequence

MAIN_TASKS = ("phone", "speaker", "asr", "finetune")
MODELS = ("pretrained", "random_init", "fbank")
_LAYER_TASK = re.compile(r"^phone_layer(\d+)$")


def row(task: str, model: str, seed: int | None, metric: str, value: float, higher_is_better: bool) -> dict:
    return {"task": task, "model": model, "seed": seed, "metric": metric, "value": float(value),
            "higher_is_better": bool(higher_is_better)}


def _values(rows: Iterable[dict], task: str, metric: str, model: str) -> list[float]:
    return [r["value"] for r in rows if r["task"] == task and r["metric"] == metric and r["model"] == model]


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def verdict(pretrained: float, random_values: Sequence[float], higher_is_better: bool) -> str:
    """Whether pretrained beats random_init by more than 3 standard deviations of the seeds."""
    if len(random_values) < 2:
        return "n/a (<2 seeds)"
    mean, std = _mean_std(random_values)
    gain = pretrained - mean if higher_is_better else mean - pretrained
    return "yes" if gain > 3 * std else "no"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_table(rows: Sequence[dict]) -> str:
    """task | metric | pretrained | random_init mean ± std (n) | fbank | pretrained > random + 3 std."""
    keys = []
    for r in rows:
        key = (r["task"], r["metric"], r["higher_is_better"])
        if r["task"] in MAIN_TASKS and key not in keys:
            keys.append(key)
    header = ("task", "metric", "pretrained", "random_init (mean ± std, n)", "fbank", "pretrained > random + 3 std")
    lines = [header]
    for task, metric, hib in keys:
        pre = _values(rows, task, metric, "pretrained")
        rnd = _values(rows, task, metric, "random_init")
        fb = _values(rows, task, metric, "fbank")
        pre_v = statistics.fmean(pre) if pre else None
        if rnd:
            mean, std = _mean_std(rnd)
            rnd_s = f"{mean:.3f} ± {_fmt(std)} (n={len(rnd)})"
        else:
            rnd_s = "-"
        lines.append((task, f"{metric} ({'higher' if hib else 'lower'} is better)", _fmt(pre_v), rnd_s,
                      _fmt(statistics.fmean(fb) if fb else None),
                      verdict(pre_v, rnd, hib) if pre and rnd else "-"))
    return _columns(lines)


def layer_table(rows: Sequence[dict]) -> str:
    """Per-layer phone probe accuracy: pretrained, random_init (mean over seeds), fbank; and the majority rate."""
    layers = sorted({int(m.group(1)) for r in rows if (m := _LAYER_TASK.match(r["task"]))})
    if not layers:
        return ""
    lines = [("model",) + tuple(f"layer{i}" for i in layers)]
    for model in MODELS:
        vals = [_values(rows, f"phone_layer{i}", "accuracy", model) for i in layers]
        if any(vals):
            lines.append((model,) + tuple(_fmt(statistics.fmean(v)) if v else "-" for v in vals))
    majority = _values(rows, "phone_majority", "accuracy", "majority")
    text = _columns(lines)
    if majority:
        text += f"\nmajority-class rate (a collapsed layer scores this): {majority[0]:.3f}"
    return text


def _columns(lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_results(rows: Sequence[dict], out_dir: Path) -> Path:
    path = out_dir / "results.json"
    path.write_text(json.dumps(list(rows), indent=1) + "\n")
    return path


def plot_layer_weights(weights: Sequence[dict], rows: Sequence[dict], out_path: Path) -> Path:
    """One panel per probe task with the learnt softmax layer weights (pretrained bars, random_init mean as
    markers), and one with the per-layer phone probe accuracies and the majority rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in MAIN_TASKS if any(w["task"] == t and w["model"] != "fbank" for w in weights)]
    has_layers = any(_LAYER_TASK.match(r["task"]) for r in rows)
    panels = len(tasks) + int(has_layers)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(4.2 * max(1, panels), 3.4), squeeze=False)
    axes = list(axes[0])
    for ax, task in zip(axes, tasks):
        pre = [w["weights"] for w in weights if w["task"] == task and w["model"] == "pretrained"]
        rnd = [w["weights"] for w in weights if w["task"] == task and w["model"] == "random_init"]
        n = len((pre or rnd)[0])
        if pre:
            ax.bar(range(n), pre[0], color="tab:blue", label="pretrained")
        if rnd:
            mean = [statistics.fmean(col) for col in zip(*rnd)]
            ax.plot(range(n), mean, "o--", color="tab:orange", label=f"random_init (mean of {len(rnd)})")
        ax.axhline(1.0 / n, color="grey", lw=0.8, ls=":", label="equal")
        ax.set_title(f"{task}: layer weights")
        ax.set_xlabel("layer (0 = after subsampling)")
        ax.set_xticks(range(n))
        ax.legend(fontsize=7)
    if has_layers:
        ax = axes[len(tasks)]
        layers = sorted({int(m.group(1)) for r in rows if (m := _LAYER_TASK.match(r["task"]))})
        for model, style in (("pretrained", "o-"), ("random_init", "s--")):
            vals = [_values(rows, f"phone_layer{i}", "accuracy", model) for i in layers]
            if all(vals):
                ax.plot(layers, [statistics.fmean(v) for v in vals], style, label=model)
        fb = _values(rows, "phone_layer0", "accuracy", "fbank")
        if fb:
            ax.axhline(fb[0], color="tab:green", lw=1, label="fbank")
        majority = _values(rows, "phone_majority", "accuracy", "majority")
        if majority:
            ax.axhline(majority[0], color="grey", lw=1, ls=":", label="majority class")
        ax.set_title("phone: per-layer linear probe")
        ax.set_xlabel("layer")
        ax.set_ylabel("test frame accuracy")
        ax.set_ylim(0.0, 1.02)
        ax.set_xticks(layers)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
