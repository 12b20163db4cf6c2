"""The options of `nest-ssl evaluate` (`EvalOptions`) and their check, without importing torch: the command line
reads the defaults from here before torch is loaded (see nest_ssl.cli.evaluate: the OpenMP wait policy must be in
the environment before torch starts its threads)."""

from __future__ import annotations

from dataclasses import dataclass

from nest_ssl.evaluate.errors import EvaluationError

TASKS = ("phone", "speaker", "asr", "finetune")
PROBE_TASKS = ("phone", "speaker", "asr")


@dataclass
class EvalOptions:
    tasks: tuple[str, ...] = TASKS
    random_seeds: int = 3  # random_init baselines for the probes (seeds 0..n-1)
    finetune_seeds: int = 3  # random_init baselines for fine-tuning (the first n of the same seeds; 3 gives a spread)
    seed: int = 0  # the probe seed of pretrained and fbank
    epochs: int = 30  # probe epochs (phone, speaker, asr)
    lr: float = 1e-2  # probe learning rate (Adam)
    frame_batch: int = 64  # phone probe: frames per step
    batch_size: int = 8  # speaker/asr probes and fine-tuning: utterances per step
    asr_lstm_hidden: int = 0  # 0: linear CTC head on the probe; >0: one BiLSTM layer of this size first
    ctc_upsample: int = 2  # CTC labels per encoder frame (characters outrun 80 ms frames)
    finetune_steps: int = 100
    finetune_lr: float = 1e-3
    device: str = "cpu"
    layer_probes: bool = True  # phone: a probe per layer and the majority rate


def check_options(opts: EvalOptions) -> None:
    unknown = [t for t in opts.tasks if t not in TASKS]
    if unknown or not opts.tasks:
        raise EvaluationError(f"--tasks {','.join(opts.tasks)}: choose from {','.join(TASKS)}")
    for name in ("epochs", "frame_batch", "batch_size", "ctc_upsample", "finetune_steps"):
        if getattr(opts, name) < 1:
            raise EvaluationError(f"--{name.replace('_', '-')} {getattr(opts, name)}: must be at least 1")
    if opts.random_seeds < 0 or opts.finetune_seeds < 0:
        raise EvaluationError("--random-seeds and --finetune-seeds must be 0 or more")
