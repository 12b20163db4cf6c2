"""The fine-tuning loop, built from the NEST trainer's parts: its process launch and collectives
(nest_ssl.train.distributed), preemption signals (nest_ssl.train.signals), metrics writer (TensorBoard +
metrics.jsonl, nest_ssl.train.loggers), loop counters (nest_ssl.train.loop_state), the Lhotse sampler's position
(nest_ssl.data.lhotse_adapter) and per-step seeding (nest_ssl.seeding). The NEST trainer's own loop is about masked
token prediction (its step statistics, learning health, FLOPs); this one drives an ASR model through two calls
(nest_ssl.asr.heads.ASRModel): `loss(audio, audio_len, targets)` and `greedy_texts(...)` for the dev WER.

Each optimizer step: seed every generator from (seed, step, rank) -> forward/backward under autocast (bf16-mixed;
DDP averages the gradients) -> one all-reduce of [loss, stop requests] -> clip, step, schedule -> log -> validate
(greedy dev WER/CER, the dev set split over the ranks, the error counts all-reduced) when due -> `step-N.ckpt` when
due. A preemption signal (SIGTERM, SIGUSR1) on any rank stops every rank after the same step; the checkpoint of that
step is written and the run ends resumable (exit 75). Because every step reseeds from its number and the checkpoint
holds the sampler rewound to the batches trained on, a resumed run repeats the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from nest_ssl.asr.ft_config import LoopSettings
from nest_ssl.data.lhotse_adapter import rewind_sampler_state
from nest_ssl.seeding import seed_for
from nest_ssl.train.distributed import DistInfo, all_reduce_sum
from nest_ssl.train.loggers import MetricsWriter
from nest_ssl.train.loop_state import LoopState
from nest_ssl.train.signals import StopRequests

log = logging.getLogger(__name__)

LOG_TSV = "log.tsv"
LOG_HEADER = "step\tloss\tdev_wer\tdev_cer"


class _LossModule(torch.nn.Module):
    """What DDP wraps: its forward is the model's loss, so DDP's gradient hooks see the real graph."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, audio, audio_len, targets):
        return self.model.loss(audio, audio_len, targets)


@dataclass
class Best:
    wer: float | None = None
    cer: float | None = None
    step: int = -1


@dataclass
class FitInputs:
    model: torch.nn.Module
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any  # nest_ssl.data.NestDataLoader over ASRDataset
    dev: Any  # (sampler over the dev cuts, ASRDataset) or None
    out_dir: Path | None  # None: no files (log.tsv, metrics, checkpoints); `save` and `on_best` decide
    identity: dict  # what the checkpoint's `training.data` must equal for a resume
    save: Callable[[Path, dict], None]  # writes one step-N.ckpt (rank 0)
    say: Callable[[str], None] = print
    # called on rank 0 when the dev score improves, with the step's checkpoint path when it has one; None: best.ckpt
    on_best: Callable[[Path | None], None] | None = None


class FinetuneLoop:
    def __init__(self, s: LoopSettings, info: DistInfo, inputs: FitInputs, stops: StopRequests):
        self.s, self.info, self.x, self.stops = s, info, inputs, stops
        self.model = inputs.model
        self.device = info.device
        self.state = LoopState()
        self.best = Best()
        self.sampler = inputs.train_loader.cut_sampler
        self.restored_sampler_state: dict | None = None
        self.stop_reason: str | None = None
        self.autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(s.precision)
        self.scaler = torch.amp.GradScaler("cuda") if s.precision == "16-mixed" else None
        self.loss_module = _LossModule(self.model)
        self.ddp = None
        if info.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           find_unused_parameters=s.freeze_encoder_steps > 0)
        self.metrics = MetricsWriter(inputs.out_dir, enabled=info.is_global_zero and inputs.out_dir is not None,
                                     tensorboard=True, summary_writer_kwargs={})
        self.rows: list[str] = [LOG_HEADER]

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoint content

    def training_state(self) -> dict:
        st = self.state
        sampler = None
        if not st.epoch_finished:
            sampler = rewind_sampler_state(self.sampler.state_dict(), st.batch_idx)
        return {"optimizer": self.optimizer_state(), "scheduler": self.x.scheduler.state_dict()
                if self.x.scheduler is not None else None, "scaler": self.scaler.state_dict() if self.scaler else None,
                "loop": st.to_dict(), "sampler": sampler, "world_size": self.info.world_size,
                "best": self.best.__dict__.copy(), "data": dict(self.x.identity)}

    def optimizer_state(self) -> dict:
        from nest_ssl.train.checkpoint_state import to_cpu

        return to_cpu(self.x.optimizer.state_dict())

    def restore(self, training: dict, global_step: int, log_rows: list[str]) -> None:
        self.x.optimizer.load_state_dict(training["optimizer"])
        if self.x.scheduler is not None and training.get("scheduler"):
            self.x.scheduler.load_state_dict(training["scheduler"])
        if self.scaler is not None and training.get("scaler"):
            self.scaler.load_state_dict(training["scaler"])
        self.state = LoopState.from_dict(training["loop"])
        self.state.global_step = global_step
        self.state.last_saved_step = global_step
        self.best = Best(**training.get("best", {}))
        st = self.state
        if st.epoch_finished:
            st.epoch, st.batch_idx, st.epoch_finished = st.epoch + 1, 0, False
        elif training.get("sampler") is not None:
            if int(training.get("world_size", 1)) != self.info.world_size:
                self.x.say(f"the checkpoint was written by {training.get('world_size')} processes and this run has "
                           f"{self.info.world_size}: epoch {st.epoch} starts over")
                st.batch_idx = 0
            else:
                self.restored_sampler_state = training["sampler"]
        self.rows = [LOG_HEADER] + [r for r in log_rows[1:] if r and int(r.split("\t")[0]) <= global_step]

    # ------------------------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _done(self) -> bool:
        st = self.state
        return ((self.s.max_steps > 0 and st.global_step >= self.s.max_steps)
                or (self.s.max_epochs > 0 and st.epoch >= self.s.max_epochs))

    def _write_log(self) -> None:
        if not self.info.is_global_zero or self.x.out_dir is None:
            return
        path = self.x.out_dir / LOG_TSV
        tmp = path.with_suffix(".tsv.tmp")
        tmp.write_text("".join(r + "\n" for r in self.rows), encoding="utf-8")
        os.replace(tmp, path)

    def fit(self) -> str:
        """Trains until max_steps / max_epochs or a preemption signal; returns the stop reason."""
        self.stops.install()
        try:
            self.model.train()
            while not self._done() and not self.stop_reason:
                self._epoch()
            if self.stop_reason is None:
                self.stop_reason = "max_steps" if (self.s.max_steps > 0
                                                   and self.state.global_step >= self.s.max_steps) else "max_epochs"
            if self.state.last_saved_step != self.state.global_step and self.state.global_step > 0:
                self._save()
            self._write_log()
            return self.stop_reason
        finally:
            self.metrics.close()

    def _epoch(self) -> None:
        st = self.state
        if self.restored_sampler_state is not None:
            self.sampler.load_state_dict(copy.deepcopy(self.restored_sampler_state))
            self.restored_sampler_state = None
        self.sampler.set_epoch(st.epoch)
        trained = 0
        for batch in self.x.train_loader:
            trained += 1
            self._step(batch.to(self.device))
            st.batch_idx += 1
            st.total_batch_idx += 1
            due_val = (self.s.val_every is not None and st.global_step % self.s.val_every == 0)
            self._after_step(due_val)
            if self.stop_reason or self._done():
                # the rest of this epoch is for the resumed run: the sampler state is rewound to here
                return
        if trained == 0 and st.batch_idx == 0:
            from nest_ssl.asr.errors import ASRError

            raise ASRError("the training data gives no batch (check min_duration / max_duration / batch_size)")
        st.epoch_finished = True
        if self.s.val_every is None:
            self._after_step(True, epoch_end=True)
        st.epoch += 1
        st.batch_idx = 0
        st.epoch_finished = False

    def _step(self, batch) -> None:
        st, s = self.state, self.s
        seed_for(s.seed, "step", st.global_step, self.info.rank)
        frozen = st.global_step < s.freeze_encoder_steps
        for p in self.model.encoder.parameters():
            p.requires_grad_(not frozen)
        with self._autocast():
            loss = (self.ddp or self.loss_module)(batch.audio, batch.audio_len, batch.targets)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        sums = torch.tensor([float(loss.detach()), 1.0, float(self.stops.requested()), float(self.stops.preempted)],
                            dtype=torch.float64, device=self.device)
        all_reduce_sum(self.info, sums)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(self.x.optimizer)
        if s.grad_clip > 0 and params:
            torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.x.optimizer)
            self.scaler.update()
        else:
            self.x.optimizer.step()
        self.x.optimizer.zero_grad(set_to_none=True)
        lr = float(self.x.optimizer.param_groups[0]["lr"])
        if self.x.scheduler is not None:
            self.x.scheduler.step()
        st.global_step += 1
        self._loss = float(sums[0] / sums[1])
        if sums[2] > 0:
            self.stop_reason = "preempted" if sums[3] > 0 else "max_time_per_run"
        if st.global_step % s.log_every == 0 or st.global_step == 1:
            self.metrics.log({"train_loss": self._loss, "learning_rate": lr, "epoch": st.epoch}, st.global_step)

    def _after_step(self, validate: bool, epoch_end: bool = False) -> None:
        """The step's log row, validation when due (and at the last step), then the checkpoints: `step-N.ckpt`
        every save_every steps and at the end; `best.ckpt`, the weights of the lowest dev WER so far (a link to the
        step's checkpoint when there is one)."""
        st = self.state
        final = self._done() or bool(self.stop_reason)
        wer_s = cer_s = ""
        improved = False
        if not epoch_end:
            self.rows.append(f"{st.global_step}\t{self._loss:.6f}\t\t")
        if self.x.dev is not None and (validate or (final and self.stop_reason != "preempted")):
            w, c = self.validate()
            wer_s, cer_s = f"{w:.4f}", f"{c:.4f}"
            self.rows[-1] = f"{st.global_step}\t{self._loss:.6f}\t{wer_s}\t{cer_s}"
            self.metrics.log({"val_wer": w, "val_cer": c}, st.global_step)
            score, best = (w, self.best.wer) if self.s.monitor == "wer" else (c, self.best.cer)
            if best is None or score < best:
                self.best = Best(w, c, st.global_step)
                improved = True
        saved_now = False
        if (st.global_step % self.s.save_every == 0 or final) and st.last_saved_step != st.global_step:
            self._save()
            saved_now = True
        if improved and self.info.is_global_zero:
            step_file = None if self.x.out_dir is None else self.x.out_dir / f"step-{st.global_step}.ckpt"
            saved = st.last_saved_step == st.global_step and step_file is not None and step_file.is_file()
            if self.x.on_best is not None:
                self.x.on_best(step_file if saved else None)
            elif saved:
                _link(step_file, self.x.out_dir / "best.ckpt")
            else:
                self.x.save(self.x.out_dir / "best.ckpt", self.training_state())
        if saved_now or wer_s:
            self.x.say(f"step {st.global_step}: loss {self._loss:.4f}"
                       + (f", dev WER {wer_s} CER {cer_s}" if wer_s else ""))

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Greedy dev WER and CER: the dev batches dealt round-robin to the ranks, the error counts summed."""
        from nest_ssl.asr.results import cer, wer

        sampler, dataset = self.x.dev
        self.model.eval()
        counts = torch.zeros(4, dtype=torch.float64, device=self.device)
        with torch.random.fork_rng(devices=[]), self._autocast():
            for i, cuts in enumerate(sampler):
                if i % self.info.world_size != self.info.rank:
                    continue
                b = dataset[cuts].to(self.device)
                hyps = self.model.greedy_texts(b.audio, b.audio_len, self.x.tokenizer)
                w, c = wer(b.texts, hyps), cer(b.texts, hyps)
                counts += torch.tensor([w.errors, w.ref_len, c.errors, c.ref_len], dtype=torch.float64,
                                       device=self.device)
        all_reduce_sum(self.info, counts)
        self.model.train()
        return float(counts[0] / max(1.0, float(counts[1]))), float(counts[2] / max(1.0, float(counts[3])))

    def _save(self) -> None:
        st = self.state
        if self.info.is_global_zero and self.x.out_dir is not None:
            training = self.training_state()
            t0 = time.time()
            path = self.x.out_dir / f"step-{st.global_step}.ckpt"
            self.x.save(path, training)
            self._write_log()
            log.info("saved %s in %.2f s", path, time.time() - t0)
        st.last_saved_step = st.global_step


def _link(src: Path, dst: Path) -> None:
    """best.ckpt: the step checkpoint with the lowest dev WER so far (a hard link where the file system allows)."""
    tmp = dst.with_suffix(".ckpt.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def fit_in_process(s: LoopSettings, inputs: FitInputs, device: torch.device) -> FinetuneLoop:
    """One process, no preemption handling (a caller's loop inside its own run, e.g. `nest-ssl evaluate`)."""
    loop = FinetuneLoop(s, DistInfo(device=device), inputs, StopRequests(handle_signals=False, max_time_per_run=None))
    loop.fit()
    return loop
