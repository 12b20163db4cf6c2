"""`evaluate(model_path, train, dev, test, out_dir, options)`: the whole downstream evaluation in one call.

1. Load the pretrained model (a bad file fails here, before any audio is read) and the three labelled splits
   (checked for what the tasks need).
2. Extract every hidden state once per model, frozen: pretrained, random_init for each seed (the same config, fresh
   weights), and the stacked-fbank baseline. All of it stays in memory.
3. Train the probes with the same budget and seeds for every model: phone (plus one probe per layer, and the
   majority rate), speaker, asr (CTC over characters). Dev selects the epoch, test is reported.
4. Fine-tune the whole encoder with CTC, pretrained vs random_init (`finetune_seeds` of them).
5. Write OUT_DIR/results.json, layer_weights.json and layer_weights.png; return the rows and the printed tables.

Every random choice derives from a seed (the probe seed for pretrained/fbank, the init seed for random_init), so a
rerun with the same options gives the same numbers.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nest_ssl.evaluate import ctc, features, finetune, probes, report
from nest_ssl.evaluate.data import SILENCE, SPLITS, Utterance, check_closed_set, frame_labels, index_of, load_split
from nest_ssl.evaluate.errors import EvaluationError
from nest_ssl.evaluate.options import PROBE_TASKS, TASKS, EvalOptions, check_options  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

@dataclass
class EvalResult:
    rows: list[dict]
    weights: list[dict] = field(default_factory=list)
    table: str = ""
    layers: str = ""
    out_dir: Path | None = None


def _phone_data(fs: features.FeatureSet, splits: dict[str, list[Utterance]], phone_index: dict[str, int],
                frame_shift: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for split, reps in fs.splits.items():
        labels = [torch.tensor([phone_index[p] for p in frame_labels(u, r.shape[0], frame_shift)])
                  for u, r in zip(splits[split], reps)]
        out[split] = probes.frames_and_labels(reps, labels)
    return out


def _probe_rows(fs: features.FeatureSet, splits, opts: EvalOptions, phone_index, speaker_index, frame_shift,
                result: EvalResult) -> None:
    seed = opts.seed if fs.seed is None or fs.model != "random_init" else fs.seed
    tag = f"{fs.model}{'' if fs.model != 'random_init' else f' seed {fs.seed}'}"
    if "phone" in opts.tasks:
        data = _phone_data(fs, splits, phone_index, frame_shift)
        # the weighted probe and the per-layer probes train side by side on the same minibatches (probes.phone_probes)
        per_layer = opts.layer_probes and fs.num_layers > 1
        out, accs = probes.phone_probes(data, len(phone_index), epochs=opts.epochs, lr=opts.lr,
                                        batch_size=opts.frame_batch, seed=seed, per_layer=per_layer)
        result.rows.append(report.row("phone", fs.model, seed, "accuracy", out.test["accuracy"], True))
        result.weights.append({"task": "phone", "model": fs.model, "seed": seed, "weights": out.layer_weights})
        log.info("phone probe, %s: test accuracy %.3f (dev %.3f, epoch %d)", tag, out.test["accuracy"], out.dev,
                 out.epoch + 1)
        if opts.layer_probes and not per_layer:
            # one "layer" (fbank): the softmax weight is 1 and gets no gradient, so the probe just trained is
            # already the linear probe on that layer (the same budget, selected on dev by itself)
            accs = [out.test["accuracy"]]
        for i, acc in enumerate(accs if opts.layer_probes else []):
            result.rows.append(report.row(f"phone_layer{i}", fs.model, seed, "accuracy", acc, True))
    if "speaker" in opts.tasks:
        data = {split: (fs.splits[split], torch.tensor([speaker_index[u.speaker] for u in splits[split]]))
                for split in SPLITS}
        out = probes.speaker_probe(data, len(speaker_index), epochs=opts.epochs, lr=opts.lr,
                                   batch_size=opts.batch_size, seed=seed)
        result.rows.append(report.row("speaker", fs.model, seed, "accuracy", out.test["accuracy"], True))
        result.weights.append({"task": "speaker", "model": fs.model, "seed": seed, "weights": out.layer_weights})
        log.info("speaker probe, %s: test accuracy %.3f (dev %.3f)", tag, out.test["accuracy"], out.dev)
    if "asr" in opts.tasks:
        data = {split: (fs.splits[split], [u.text for u in splits[split]]) for split in SPLITS}
        out = ctc.asr_probe(data, epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size, seed=seed,
                            upsample=opts.ctc_upsample, lstm_hidden=opts.asr_lstm_hidden)
        for metric in ("cer", "wer"):
            result.rows.append(report.row("asr", fs.model, seed, metric, out.test[metric], False))
        result.weights.append({"task": "asr", "model": fs.model, "seed": seed, "weights": out.layer_weights})
        log.info("asr probe, %s: test CER %.3f WER %.3f (dev CER %.3f)", tag, out.test["cer"], out.test["wer"],
                 out.dev)


def _majority_rows(fs: features.FeatureSet, splits, opts, phone_index, speaker_index, frame_shift, result) -> None:
    if "phone" in opts.tasks and opts.layer_probes:
        data = _phone_data(fs, splits, phone_index, frame_shift)
        rate = probes.majority_rate(data["train"][1], data["test"][1])
        result.rows.append(report.row("phone_majority", "majority", None, "accuracy", rate, True))
    if "speaker" in opts.tasks:
        train = torch.tensor([speaker_index[u.speaker] for u in splits["train"]])
        test = torch.tensor([speaker_index[u.speaker] for u in splits["test"]])
        result.rows.append(report.row("speaker_majority", "majority", None, "accuracy",
                                      probes.majority_rate(train, test), True))


def evaluate(model_path: str | Path, cuts: dict[str, str | Path], out_dir: str | Path,
             opts: EvalOptions | None = None) -> EvalResult:
    """cuts: {"train": path, "dev": path, "test": path}. Writes OUT_DIR/results.json and layer_weights.png."""
    opts = opts or EvalOptions()
    check_options(opts)
    missing = [s for s in SPLITS if not cuts.get(s)]
    if missing:
        raise EvaluationError(f"give the labelled CutSets of every split: --{'-cuts, --'.join(missing)}-cuts missing")
    t0 = time.time()
    pretrained, model_cfg = features.load_pretrained(model_path, device=opts.device)
    sample_rate = int(model_cfg.get("sample_rate", 16000))
    frame_shift = features.frame_shift_of(model_cfg)
    splits = {s: load_split(cuts[s], s, opts.tasks, sample_rate) for s in SPLITS}
    if "speaker" in opts.tasks:
        for s in ("dev", "test"):
            check_closed_set(splits["train"], splits[s], cuts[s], s)
    log.info("labelled set: %s utterances (train/dev/test), %.1f s of train audio",
             "/".join(str(len(splits[s])) for s in SPLITS), sum(u.duration for u in splits["train"]))
    speaker_index = index_of(u.speaker for u in splits["train"]) if "speaker" in opts.tasks else {}
    result = EvalResult(rows=[])

    probe_tasks = [t for t in opts.tasks if t in PROBE_TASKS]
    if probe_tasks:
        sets = [features.extract_feature_set(pretrained, splits, "pretrained", None)]
        for s in range(opts.random_seeds):
            model = features.random_init(model_cfg, s, device=opts.device)
            sets.append(features.extract_feature_set(model, splits, "random_init", s))
            del model
        sets.append(features.extract_feature_set(pretrained, splits, "fbank", None,
                                                 fbank_factor=features.subsampling_of(model_cfg)))
        log.info("features extracted for %d models in %.1f s", len(sets), time.time() - t0)
        phone_index = {}
        if "phone" in opts.tasks:
            # over every feature set: fbank's frame count may differ from the encoder's by one at the end
            phone_index = index_of([SILENCE] + [lab for fs in sets for split, utts in splits.items()
                                                for u, r in zip(utts, fs.splits[split])
                                                for lab in frame_labels(u, r.shape[0], frame_shift)])
        _majority_rows(sets[0], splits, opts, phone_index, speaker_index, frame_shift, result)
        for fs in sets:
            _probe_rows(fs, splits, opts, phone_index, speaker_index, frame_shift, result)
        del sets
        log.info("probes done after %.1f s", time.time() - t0)

    if "finetune" in opts.tasks:
        runs = [("pretrained", opts.seed, pretrained)]
        runs += [("random_init", s, None) for s in range(opts.finetune_seeds)]
        for name, seed, nest in runs:
            nest = nest if nest is not None else features.random_init(model_cfg, seed, device=opts.device)
            model = finetune.from_nest(nest, opts.ctc_upsample).to(opts.device)
            out = finetune.finetune(model, splits, steps=opts.finetune_steps, lr=opts.finetune_lr,
                                    batch_size=opts.batch_size, seed=seed)
            for metric in ("cer", "wer"):
                result.rows.append(report.row("finetune", name, seed, metric, out.test[metric], False))
            log.info("finetune, %s seed %d: test CER %.3f WER %.3f (dev CER %.3f at step %d)", name, seed,
                     out.test["cer"], out.test["wer"], out.dev, out.step)
            del model
        log.info("fine-tuning done after %.1f s", time.time() - t0)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_results(result.rows, out_dir)
    (out_dir / "layer_weights.json").write_text(json.dumps(result.weights, indent=1) + "\n")
    if result.weights and importlib.util.find_spec("matplotlib") is None:
        # the numbers are in layer_weights.json; a missing optional package must not fail a finished evaluation
        log.warning("layer_weights.png not drawn: matplotlib is not installed (pip install 'nest-ssl[plot]')")
    elif result.weights:
        report.plot_layer_weights(result.weights, result.rows, out_dir / "layer_weights.png")
    result.table = report.summary_table(result.rows)
    result.layers = report.layer_table(result.rows)
    result.out_dir = out_dir
    return result
