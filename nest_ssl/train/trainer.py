"""The training loop: Lightning's fit loop semantics for NEST, in plain PyTorch.

Order of work for each training batch (Lightning's, with validation before the checkpoint of the same step so that
a checkpoint carries the val_loss it was judged by):

    fetch (one batch ahead, to know the last batch of an epoch) -> forward/backward (loss / accumulate_grad_batches,
    DDP gradient sync only on the last micro-batch) -> [optimizer step: all ranks agree on finiteness, unscale,
    clip, step, scheduler step, zero grads] -> logging every log_every_n_steps -> validation when due -> checkpoint
    when due -> stop when max_steps / max_epochs / max_time_per_run / a preemption signal says so (a preempted stop
    writes the last checkpoint first: nest_ssl.train.preemption).

`global_step` counts optimizer steps (a step skipped for a non-finite loss is not one). `val_check_interval` (int)
counts training batches of the current epoch (of the whole run when check_val_every_n_epoch is null), as in
Lightning; a float (1.0) validates at the end of every epoch.

The loop's collaborators, each in its own module: checkpoint_state (what a checkpoint holds, and resuming from
it), loop_state (the counters), stream_positions (iterable input's per-stream positions), signals (SIGTERM, SIGUSR1
and the time limit), preemption (the stop on a signal: the last checkpoint first, the rest within its deadline),
tracing (NEST_SSL_TRACE_DIR), rejects (rejected_cuts.tsv), health (learning health), step_stats (the per-step
all-reduce), checkpoint_schedule (an epoch too short to validate: the warning, and the save at its end when nothing
else would save). Lhotse's sampler state is reached through nest_ssl.data.lhotse_adapter only.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from pathlib import Path
from typing import Iterator

import torch
from omegaconf import ListConfig
from torch import nn

from nest_ssl.checkpoint import CheckpointManager, load_checkpoint
from nest_ssl.data.device_augment import batch_to_device
from nest_ssl.data.lhotse_adapter import map_style_sampler_of
from nest_ssl.errors import UserError
from nest_ssl.models.flops import step_flops, synthetic_batch
from nest_ssl.seeding import seed_for
from nest_ssl.train.checkpoint_schedule import epoch_too_short_to_validate, save_at_short_epoch_end
from nest_ssl.train.checkpoint_state import build_checkpoint, restore_checkpoint
from nest_ssl.train.compile import compile_encoder, eager, pad_batch, samples_per_encoder_frame
from nest_ssl.train.distributed import DistInfo, all_ranks_have, all_reduce_sum
from nest_ssl.train.health import CollapseAlarm, CumulativeCounts, HealthLayout, step_metrics, validation_metrics
from nest_ssl.train.loggers import MetricsWriter, ProgressBar
from nest_ssl.train.loop_state import LoopState
from nest_ssl.train.preemption import stop_for_preemption
from nest_ssl.train.rejects import RejectedCutsLog
from nest_ssl.train.signals import StopRequests
from nest_ssl.train.step_stats import StepStats
from nest_ssl.train.stream_positions import StreamPositions, end_of_epoch, streams_end
from nest_ssl.train.telemetry import DataWaitClock, Telemetry
from nest_ssl.train.trainer_config import RunSettings
from nest_ssl.train.tracing import NONFINITE_GRAD_ENV, StepTrace, nonfinite_grad_requested

__all__ = ["EmptyEpochError", "LoopState", "NonFiniteLossError", "Trainer"]

log = logging.getLogger("nest_ssl.train")


class EmptyEpochError(UserError, RuntimeError):
    """An epoch without a single batch (the data or its filter changed, or a rank got no shard): the user's to fix."""


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


class _StepModule(nn.Module):
    """What DDP wraps: its forward is the model's training step, so DDP's gradient hooks see the real graph.

    The output is a dict so DDP's output traversal finds the loss tensor.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, apply_mask: bool = True):
        out = self.model.training_output(batch, apply_mask=apply_mask)
        return {"loss": out.loss, "out": out}


class _Lookahead:
    """Yields (batch, is_last) by fetching one batch ahead; reseeds the generators before each fetch.

    `join(has_batch) -> bool` tells whether every rank has a next batch (the join, see
    nest_ssl.train.distributed.all_ranks_have): a rank's batch is the last of the epoch as soon as any rank has
    none after it, so every rank trains the same number of micro-batches and leaves the epoch at the same step.
    """

    def __init__(self, loader, seed: int, rank: int, start_index: int, join=None, clock: DataWaitClock | None = None):
        self.it = iter(loader)
        self.clock = clock or DataWaitClock()
        self.seed, self.rank = seed, rank
        self.index = start_index
        self.join = join or (lambda has_batch: has_batch)
        self.next = self._fetch()
        self.has_next = self.join(self.next is not None)

    def _fetch(self):
        seed_for(self.seed, "data", self.index, self.rank)
        try:
            return self.clock.timed_next(self.it)
        except StopIteration:
            return None

    def __iter__(self) -> Iterator:
        while self.has_next:
            batch = self.next
            self.index += 1
            self.next = self._fetch()
            self.has_next = self.join(self.next is not None)
            yield batch, not self.has_next


class Trainer:
    """Fits a NESTModel with Lightning's trainer.* semantics and NeMo's exp_manager outputs."""

    def __init__(
        self,
        *,
        cfg,
        settings: RunSettings,
        info: DistInfo,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        train_loader,
        val_loader,
        log_dir: Path,
        ckpt_dir: Path,
        write_nemo_fn,
        stop_requests: StopRequests | None = None,
    ):
        self.cfg = cfg
        self.s = settings
        self.t = settings.trainer
        self.info = info
        self.device = info.device
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.log_dir = log_dir
        self.write_nemo_fn = write_nemo_fn
        self.state = LoopState()
        self.sample_rate = int(cfg.model.get("sample_rate", 16000))
        self.seed = settings.nest_trainer.seed
        # Map-style input: the Lhotse sampler whose state the checkpoint keeps (None in iterable mode).
        self.sampler = map_style_sampler_of(train_loader)
        # Iterable (Shar) input: each (rank, worker) stream's position, from the batches actually trained on
        # (nest_ssl.data.ResumableIterable); kept in the checkpoint for an exact resume.
        from nest_ssl.data import ResumableIterable

        ds = getattr(train_loader, "dataset", None)
        self.streams = ds if isinstance(ds, ResumableIterable) else None
        self.stream_positions = StreamPositions()
        # Map-style input resumed mid-epoch: the sampler state to load when the epoch loop starts.
        self.restored_sampler_state: dict | None = None
        self.last_metrics: dict[str, float] = {}
        self.stop_reason: str | None = None

        # Precision: autocast dtype, and a GradScaler for fp16 (bf16 needs none).
        self.autocast_dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(self.t.precision)
        if self.t.precision == "16-mixed" and self.device.type != "cuda":
            raise ValueError("trainer.precision=16-mixed needs a GPU; on CPU use bf16-mixed or 32")
        self.scaler = torch.amp.GradScaler("cuda") if self.t.precision == "16-mixed" else None

        # torch.compile of the encoder, and the padding that bounds its recompilations (nest_ssl/train/compile.py)
        comp = settings.nest_trainer.compile
        self.pad_samples = comp.pad_to_multiple * samples_per_encoder_frame(cfg.model)
        if comp.enabled:
            compile_encoder(model, comp)
        self.step_module = _StepModule(model)
        if info.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(
                self.step_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.t.find_unused_parameters or not self._trains_every_parameter(model),
            )
        else:
            self.ddp = None
        self.ckpt = CheckpointManager(
            settings.exp_manager.checkpoint, ckpt_dir, settings.name,
            enabled=settings.exp_manager.create_checkpoint_callback,
        )
        self.metrics_writer = MetricsWriter(
            log_dir,
            enabled=info.is_global_zero,
            tensorboard=settings.exp_manager.create_tensorboard_logger,
            summary_writer_kwargs=settings.exp_manager.summary_writer_kwargs,
        )
        self.trace = StepTrace(info.rank)
        self.rejects = RejectedCutsLog(log_dir, info.rank)
        # The preemption signals (caught from the process's start when run() passes them in) and max_time_per_run,
        # counted from here.
        e = settings.exp_manager
        self.stop_requests = stop_requests or StopRequests(handle_signals=e.create_preemption_callback,
                                                           max_time_per_run=e.max_time_per_run)
        self.stop_requests.start_time = time.time()
        self.validation_cut: str | None = None  # why the last validation was cut short: "signal", "deadline"
        self._already_done = False  # the run had reached max_steps / max_epochs before this process started
        self._warned_val_interval = False
        # Throughput counts training time only (fetch, forward, backward, step), not validation or checkpoints.
        self._train_time_since_log = 0.0
        self._audio_since_log = 0.0
        self._audio_per_s_ema: float | None = None
        # audio/tokens per second, FLOPs and MFU, data wait and padding shares (nest_ssl/train/telemetry.py)
        self.telemetry = Telemetry(self.device, self.sample_rate, self._count_step_flops)
        self.data_wait = DataWaitClock()
        # Learning health (nest_ssl/train/health.py): accuracy and target-code counts ride the step's all-reduce
        # (after the trainer's own statistics: StepStats.health); the cumulative counts and the alarm's state
        # are kept in the checkpoint.
        quantizer = getattr(model, "quantizer", None)
        self.health = HealthLayout(int(getattr(quantizer, "num_classes", cfg.model.num_classes)),
                                   int(getattr(quantizer, "num_books", cfg.model.get("num_books", 1))))
        self.cum_counts = CumulativeCounts(self.health.num_classes, self.health.num_books)
        self.alarm = CollapseAlarm(settings.nest_trainer.health, announce=info.is_global_zero)  # same on every rank
        self._val_health: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoint content

    def build_checkpoint(self, writer: bool = True) -> dict | None:
        """The checkpoint dict (nest_ssl.train.checkpoint_state) on the writing rank, None on the others; a
        collective: all ranks call it."""
        return build_checkpoint(self, writer)

    def restore(self, ckpt: dict, path: Path) -> None:
        """Continues from a checkpoint: weights, optimizer, scheduler, scaler, counters, data position, RNGs."""
        restore_checkpoint(self, ckpt, path)

    # ------------------------------------------------------------------------------------------------------------
    # Helpers

    def _trains_every_parameter(self, model: nn.Module) -> bool:
        """False when the model leaves some parameters without gradient in training (mask_position: post_conv);
        DDP then has to look for them (find_unused_parameters), or it fails at the second step."""
        every = bool(getattr(model, "trains_every_parameter", True))
        if not every and not self.t.find_unused_parameters and self.info.is_global_zero:
            log.info("mask_position: post_conv leaves the subsampler without gradient in training: DDP runs with "
                     "find_unused_parameters=True")
        return every

    def _needs_join(self) -> bool:
        """Finite iterable input (force_finite) gives ranks different numbers of batches: the join decides the end
        of an epoch. Map-style data gives every rank the same number and an infinite stream never ends, so they
        skip it (it is a collective and a host synchronisation before every batch)."""
        return self.info.world_size > 1 and self.streams is not None and streams_end(self.streams)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _count_step_flops(self, shape: tuple[int, int], lengths: list[int]) -> int:
        """FLOPs of one training step at a padded shape, counted outside the step (no side effects; telemetry)."""
        with eager(self.model):
            return step_flops(self.model, synthetic_batch(shape[0], shape[1], lengths, device=self.device),
                              autocast_dtype=self.autocast_dtype, seed=self.seed)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _max_steps_reached(self) -> bool:
        return self.t.max_steps != -1 and self.state.global_step >= self.t.max_steps

    def _max_epochs_reached(self) -> bool:
        return self.t.max_epochs != -1 and self.state.epoch >= self.t.max_epochs

    def validation_enabled(self) -> bool:
        return self.val_loader is not None and self.t.limit_val_batches not in (0, 0.0)

    def _validate_before_stopping(self) -> bool:
        """A time-limit stop after a step that no validation has seen yet."""
        return (self.stop_reason == "max_time_per_run" and self.validation_enabled()
                and self.state.last_val_step != self.state.global_step)

    def _should_validate(self, is_last: bool) -> bool:
        if not self.validation_enabled():
            return False
        n = self.t.check_val_every_n_epoch
        if n is not None and (self.state.epoch + 1) % n != 0:
            return False
        vci = self.t.val_check_interval
        if isinstance(vci, float):
            return is_last  # 1.0: once per epoch, after its last batch
        counter = self.state.total_batch_idx if n is None else self.state.batch_idx
        return counter % vci == 0

    def _clip(self, total_norm: torch.Tensor | None) -> None:
        """Clips the gradients as trainer.gradient_clip_* say; `total_norm` is their norm (`_grad_norm_into`)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params or self.t.gradient_clip_val <= 0 or total_norm is None:
            return
        if self.t.gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, self.t.gradient_clip_val)
        else:
            torch.nn.utils.clip_grads_with_norm_(params, self.t.gradient_clip_val, total_norm)

    def _record_rejects(self, rejected, purpose: str) -> None:
        """Training goes on without the cuts the loader dropped; they are counted and listed (rejects.py)."""
        if purpose == "train":
            self.state.rejected_cuts += len(rejected)
        self.rejects.record(rejected, purpose, self.state.global_step)

    # ------------------------------------------------------------------------------------------------------------
    # Validation

    @torch.no_grad()
    def validate(self, limit: int | None = None, purpose: str = "val", until: float | None = None,
                 stop_on_signal: bool = True) -> float | None:
        """Mean over validation batches (every rank's) of the batch loss; batches without masked tokens are left
        out. Masking, dither and augmentation are seeded per batch, so val_loss compares across checkpoints.

        Cut short (None; `self.validation_cut` says why) on every rank when some rank got a preemption signal
        (`stop_on_signal`) or passed `until` (time.monotonic()) before its last batch: each rank checks before each
        batch, and the one all-reduce at the end tells the others."""
        self.validation_cut = None
        if self.val_loader is None:
            return None
        self.model.eval()
        # loss sum, batches, empty batches, the health sums of the masked tokens (accuracy, the floor's counts),
        # then the ranks whose validation was cut short by the deadline and by a signal
        width = self.health.width
        total = torch.zeros(3 + width + 2, dtype=torch.float64, device=self.device)
        cap = self.t.limit_val_batches
        cap = None if isinstance(cap, float) else int(cap)
        if limit is not None:
            cap = limit if cap is None else min(cap, limit)
        cpu_state = torch.get_rng_state()
        ctx = torch.inference_mode() if self.t.inference_mode else contextlib.nullcontext()
        with ctx:
            for i, batch in enumerate(self.val_loader):
                if cap is not None and i >= cap:
                    break
                if stop_on_signal and self.stop_requests.preempted:
                    total[-1] += 1
                    break
                if until is not None and time.monotonic() >= until:
                    total[-2] += 1
                    break
                seed_for(self.seed, purpose, i, self.info.rank)
                if getattr(batch, "rejected", None):
                    self._record_rejects(batch.rejected, purpose)
                batch = batch_to_device(self.val_loader, batch, self.device)
                with self._autocast():
                    out = self.model.training_output(batch, apply_mask=True)
                if out.empty_mask or not torch.isfinite(out.loss):
                    total[2] += 1
                    continue
                total[0] += out.loss.double()
                total[1] += 1
                self.health.add(total[3:3 + width], out, count="masked")
        torch.set_rng_state(cpu_state)
        all_reduce_sum(self.info, total)
        self.model.train()
        if total[-1] > 0 or total[-2] > 0:
            self.validation_cut = "signal" if total[-1] > 0 else "deadline"
            self._val_health = {}
            return None
        if total[2] > 0:
            log.warning("validation: %d batch(es) had no masked token (or a non-finite loss) and were left out",
                        int(total[2]))
        if total[1] == 0:
            self._val_health = {}
            return None
        val_loss = float(total[0] / total[1])
        # val_acc, val_floor, ...
        self._val_health = validation_metrics(self.health, total[3:3 + width], val_loss, self.cum_counts.counts)
        return val_loss

    def run_validation(self, stale_if_none: bool = False, **cut) -> bool:
        """Validates and logs; False when the validation was cut short (`cut`: validate's until, stop_on_signal).
        `stale_if_none`: a validation without a usable batch drops the previous val_loss rather than leave it to
        name a checkpoint of other weights."""
        val_loss = self.validate(**cut)
        if self.validation_cut:
            return False
        st = self.state
        st.last_val_step = st.global_step
        if val_loss is None:
            if stale_if_none:
                self.last_metrics.pop("val_loss", None)
            return True
        self.last_metrics["val_loss"] = val_loss
        vh = dict(self._val_health)
        self.alarm.check_floor(st.global_step, val_loss, vh.get("val_floor"), vh.get("val_floor_tokens"))
        self.metrics_writer.log({"val_loss": val_loss, "epoch": st.epoch, **vh, **self.alarm.flags()},
                                st.global_step)
        floor = vh.get("val_floor")
        log.info("epoch %d step %d: val_loss=%.4f (context-free floor %s: %s) val_acc=%s (chance %s)",
                 st.epoch, st.global_step, val_loss, "n/a" if floor is None else f"{floor:.4f}",
                 "n/a" if floor is None else f"{val_loss - floor:+.4f}",
                 f"{vh['val_acc']:.4f}" if "val_acc" in vh else "n/a",
                 f"{vh['val_chance_majority']:.4f}" if "val_chance_majority" in vh else "n/a")
        return True

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints

    def _checkpoint_metrics(self) -> dict:
        m = {"epoch": self.state.epoch, "step": self.state.global_step}
        m.update(self.last_metrics)
        return m

    def save_checkpoint(self, again: bool = False) -> None:
        """Top-k (when the monitored value ranks), last and .nemo (always_save_nemo): once per step unless `again`."""
        st = self.state
        if st.last_saved_step == st.global_step and st.global_step > 0 and not again:
            return
        writes = self.info.is_global_zero and self.ckpt.enabled
        # a collective (RNG states of every rank): all ranks call it; only the writer copies the state to the host
        ckpt = self.build_checkpoint(writer=writes)
        if writes:
            self.ckpt.save(ckpt, self._checkpoint_metrics(), self.write_nemo_fn)
        st.last_saved_step = st.global_step

    def save_last_checkpoint(self) -> None:
        """The last checkpoint only (no ranking, top-k or .nemo): what a preempted stop writes first."""
        ckpt = self.build_checkpoint()  # collective: all ranks call it
        if self.info.is_global_zero and self.ckpt.enabled:
            log.info("saved %s", self.ckpt.save_last(ckpt, self._checkpoint_metrics()))
        self.state.last_saved_step = self.state.global_step

    # ------------------------------------------------------------------------------------------------------------
    # Fit

    def fit(self) -> LoopState:
        st = self.state
        t = self.t
        self.stop_requests.install()  # until close(): a signal while the last files are written must not kill them
        total = t.max_steps if t.max_steps != -1 else None
        bar = ProgressBar(t.enable_progress_bar and self.info.is_global_zero, total, st.global_step)
        self.bar = bar
        try:
            if self._max_steps_reached() or self._max_epochs_reached():
                # A finished run: its status says so, and finish() writes the .nemo if the run that got there was
                # preempted at its last step before writing it.
                self.stop_reason = "max_steps" if self._max_steps_reached() else "max_epochs"
                self._already_done = True
                log.info("nothing to do: the run already reached %s (global step %d, epoch %d)",
                         self.stop_reason, st.global_step, st.epoch)
                return st
            if t.num_sanity_val_steps != 0 and self.val_loader is not None:
                n = None if t.num_sanity_val_steps == -1 else t.num_sanity_val_steps
                loss = self.validate(limit=n, purpose="sanity")
                log.info("sanity check on %s validation batch(es): val_loss=%s", "all" if n is None else n,
                         "n/a" if loss is None else f"{loss:.4f}")
            if not all_ranks_have(self.info, not self.stop_requests.preempted):
                # A signal before the first step (while loading, or in the sanity check): nothing new to save.
                self.stop_reason = "preempted"
                log.warning("%s before the first step: stopping (nothing new to save)",
                            self.stop_requests.signal_name or "a signal on another rank")
                return st
            self.model.train()
            while not self.stop_reason:
                if self._max_epochs_reached():
                    self.stop_reason = "max_epochs"
                    break
                try:
                    self._train_epoch()
                except UserError:
                    self._keep_progress()
                    raise
            return st
        finally:
            bar.close()

    def _keep_progress(self) -> None:
        """A user error in the middle of a run (e.g. a manifest truncated since the run opened it): checkpoint the
        optimizer steps done so far, so that the rerun after the fix resumes there instead of at the last periodic
        checkpoint. Single process and no gradient accumulation only: the checkpoint is a collective (other ranks
        are not at this point) and a partial accumulation would be lost."""
        st = self.state
        if self.info.world_size != 1 or st.global_step == 0 or self.t.accumulate_grad_batches != 1:
            return
        try:
            self.save_checkpoint()
            log.info("stopped by an error in the data at global step %d: saved the progress (resume after the fix)",
                     st.global_step)
        except Exception as err:  # the user's error is what must reach the user
            log.warning("could not save the progress after the error: %s", err)

    def finish(self) -> None:
        """End of training: the last checkpoint and NeMo's .nemo on train end (unless stopped by an error or a
        preemption, whose stop wrote what its deadline allowed)."""
        if self.stop_reason in ("nonfinite",):
            return
        if self.stop_reason == "preempted":
            self.metrics_writer.flush()
            return
        self.save_checkpoint()
        c = self.s.exp_manager.checkpoint
        if (self.info.is_global_zero and self.ckpt.enabled and c.save_nemo_on_train_end
                and self.stop_reason in ("max_steps", "max_epochs")
                and not (self._already_done and self.ckpt.nemo_path.exists())):
            if c.save_best_model and self.ckpt.best_model_path and Path(self.ckpt.best_model_path).exists():
                sd = load_checkpoint(self.ckpt.best_model_path)["state_dict"]
            else:
                sd = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            self.write_nemo_fn(self.ckpt.nemo_path, sd)
            log.info("saved %s", self.ckpt.nemo_path)
        self.metrics_writer.flush()

    def close(self) -> None:
        self.stop_requests.uninstall()
        self.metrics_writer.close()

    def _train_epoch(self) -> None:
        st, t = self.state, self.t
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            if self.restored_sampler_state is not None:
                self.sampler.load_state_dict(copy.deepcopy(self.restored_sampler_state))
                self.restored_sampler_state = None
            self.sampler.set_epoch(st.epoch)
        elif st.batch_idx and self.streams is None:
            log.warning("the training dataloader has no resumable sampler: epoch %d starts over", st.epoch)
            st.batch_idx = 0
        acc = t.accumulate_grad_batches
        limit = None if isinstance(t.limit_train_batches, float) else int(t.limit_train_batches)
        # Per optimizer step: the named sums of nest_ssl.train.step_stats, then the health sums (accuracy,
        # target-code counts), so that one all-reduce per step carries them all.
        stats = StepStats(self.health.width, self.device)
        micro = 0
        grad_norm = None
        step_t0 = time.time()
        # The join: with finite iterable data (force_finite) ranks can run out at different batches; all of them
        # end the epoch after the last batch every rank has (the step in progress is completed by all).
        join = (lambda has_batch: all_ranks_have(self.info, has_batch)) if self._needs_join() else None
        fetcher = _Lookahead(self.train_loader, self.seed, self.info.rank, st.total_batch_idx, join=join,
                             clock=self.data_wait)
        if self.streams is not None:
            self.streams.resume = None  # used by this epoch's iter(); later epochs start their streams afresh
        if not fetcher.has_next and st.batch_idx == 0:
            # Without this, an epoch without batches would make max_epochs=-1 loop forever.
            where = "" if self.info.world_size == 1 else (
                f" on {'this rank' if fetcher.next is None else 'another rank'} (rank {self.info.rank} of "
                f"{self.info.world_size}; with force_finite every rank needs at least one Shar shard or manifest "
                "file per dataloader worker)")
            spec = self.cfg.model.train_ds.get("manifest_filepath")
            spec = ",".join(map(str, spec)) if isinstance(spec, ListConfig) else spec
            raise EmptyEpochError(
                f"the training data gives no batch in epoch {st.epoch}{where}: check model.train_ds "
                f"(manifest_filepath={spec}, min_duration/max_duration, batch_size with drop_last)")
        for batch, is_last in fetcher:
            if limit is not None and st.batch_idx + 1 >= limit:
                is_last = True
            seed_for(self.seed, "step", st.total_batch_idx, self.info.rank)
            if getattr(batch, "rejected", None):
                self._record_rejects(batch.rejected, "train")
            stream = getattr(batch, "stream", None)
            if stream is not None:  # this batch is trained on: its stream stands after it
                self.stream_positions.note(stream)
            batch = pad_batch(batch_to_device(self.train_loader, batch, self.device), self.pad_samples)  # + augment_on:
            # device mixing, then the padding of nest_trainer.compile.pad_to_multiple
            step_boundary = (st.batch_idx + 1) % acc == 0 or is_last
            sync_ctx = self.ddp.no_sync() if (self.ddp is not None and not step_boundary) else contextlib.nullcontext()
            with sync_ctx:
                with self._autocast():
                    res = (self.ddp or self.step_module)(batch)
                out = res["out"]
                loss = out.loss / acc
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            stats.add_micro_batch(out, batch.audio_len.sum() / self.sample_rate)  # on the device: no host read
            stats.computed_seconds += batch.audio.shape[0] * batch.audio.shape[-1] / self.sample_rate  # padded shape
            self.telemetry.micro_batch(batch)  # shapes only: no host read
            self.health.add(stats.health, out, count="valid")
            self.trace.batch(batch=st.total_batch_idx, epoch=st.epoch, sample_ids=batch.sample_id or [],
                             loss=out.loss)
            micro += 1
            st.batch_idx += 1
            st.total_batch_idx += 1
            st.epoch_finished = is_last
            stepped = False
            if step_boundary:
                stats.stop_request = 1.0 if self.stop_requests.requested() else 0.0
                stats.preempt_request = 1.0 if self.stop_requests.preempted else 0.0
                self._grad_norm_into(stats)
                stats.all_reduce(self.info)
                # The step's one host synchronisation: every decision and figure below is read from this copy.
                host = stats.host()
                self.cum_counts.add(self.health.counts(host.health))  # every rank adds the same sums
                stepped = self._optimizer_step(host, micro)
                if stepped:
                    grad_norm = float(host.grad_norm)  # every rank holds the same gradients: the mean is the norm
                step_time = time.time() - step_t0
                audio_seconds = float(host.audio_seconds)
                self.telemetry.step(step_time, self.data_wait.take(), audio_seconds, float(host.tokens),
                                    float(host.computed_seconds))
                self._audio_since_log += audio_seconds
                self._train_time_since_log += step_time
                rate = audio_seconds / max(1e-9, step_time)
                self._audio_per_s_ema = rate if self._audio_per_s_ema is None else 0.9 * self._audio_per_s_ema + 0.1 * rate
                if stepped and st.global_step % t.log_every_n_steps == 0:
                    self._log_step(host, grad_norm, step_time)
                elif stepped:
                    self.bar.update(st.global_step, host.mean_loss(), self._step_lr, self._audio_per_s_ema / 3600.0,
                                    acc=self.health.accuracy(host.health))
                if float(host.stop_request) > 0 and not self.stop_reason:
                    # Every rank decides from the summed requests: the same reason on all of them.
                    self.stop_reason = "preempted" if float(host.preempt_request) > 0 else "max_time_per_run"
                stats.zero()
                micro = 0
                if stepped:
                    self.trace.step(step=st.global_step, model=self.model)
            if self.stop_reason == "preempted":
                stop_for_preemption(self)  # the last checkpoint first; no scheduled validation or checkpoint
                return
            validated = False
            if self._should_validate(is_last):
                validated = self.run_validation()
            elif self._validate_before_stopping():
                # The checkpoint a time-limit stop writes is named and ranked by a validation of the weights it
                # holds, not by the last scheduled validation's value (Lightning validates on stop too).
                validated = self.run_validation(stale_if_none=True)
            if self.validation_cut == "signal":  # a signal cut the validation short (on some rank): stop here
                self.stop_reason = "preempted"
                stop_for_preemption(self)
                return
            if stepped and self.ckpt.due_after_step(st.global_step):
                self.save_checkpoint()
            elif validated and self.ckpt.due_after_validation(st.epoch) and st.global_step > 0:
                self.save_checkpoint()
            elif is_last and self.ckpt.due_at_epoch_end(st.epoch) and st.global_step > 0:
                self.save_checkpoint()
            elif is_last and st.global_step > 0 and save_at_short_epoch_end(self.s, st.batch_idx):
                # Epochs this short never validate and nothing else saves; the preflight could not know the epoch
                # length (iterable input), so the end of every such epoch saves instead (checkpoint_schedule.py).
                self.save_checkpoint()
            if self._max_steps_reached():
                self.stop_reason = "max_steps"
            if self.stop_reason:
                if self.stop_reason == "max_time_per_run":
                    log.warning("stopping at step %d (max_time_per_run); the last checkpoint lets the same command "
                                "continue", st.global_step)
                return
            if is_last:
                break
            if step_boundary:
                step_t0 = time.time()  # after validation and checkpoint: they are not training time
        # The epoch is over.
        if (epoch_too_short_to_validate(self.s, st.batch_idx) and self.val_loader is not None
                and not self._warned_val_interval):
            self._warned_val_interval = True
            saves = ("; meanwhile the last checkpoint is written at the end of every such epoch (no "
                     "exp_manager.checkpoint_callback_params.every_n_train_steps is set)"
                     if save_at_short_epoch_end(self.s, st.batch_idx) and self.ckpt.enabled else "")
            log.warning(
                "epoch %d had %d batches per process, fewer than trainer.val_check_interval=%d, which counts the "
                "batches of one epoch while check_val_every_n_epoch is set: validation never runs%s. Set "
                "trainer.check_val_every_n_epoch=null to count batches across epochs (Lightning raises here when "
                "it knows the epoch length in advance)", st.epoch, st.batch_idx, t.val_check_interval, saves)
        st.epoch += 1
        st.batch_idx = 0
        st.epoch_finished = False
        self.stream_positions = end_of_epoch(self.streams)

    def _grad_norm_into(self, stats: StepStats) -> None:
        """The accumulated gradients' total norm (after DDP's all-reduce, before clipping), on the device: kept for
        clipping, and written into the step's statistics (divided by the world size: every rank holds the same
        gradients, so the all-reduced sum is the norm) with this rank's verdict on its finiteness, so that every
        rank skips a step with a non-finite gradient (bf16 overflow) together. Under 16-mixed the gradients are
        unscaled first and the GradScaler keeps the verdict (it skips inf steps and lowers its scale)."""
        self._grad_norm, self._unscaled = None, False
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            self._unscaled = True
        if nonfinite_grad_requested(self.info.rank, self.state.total_batch_idx):  # a debugging aid (tracing.py)
            params[0].grad.fill_(float("nan"))
            log.warning("%s: rank %d's gradient made NaN at batch %d", NONFINITE_GRAD_ENV, self.info.rank,
                        self.state.total_batch_idx)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        self._grad_norm = norm
        stats.grad_norm = norm.double() / self.info.world_size
        if self.scaler is None:
            stats.nonfinite_grad = (~torch.isfinite(norm)).double()

    def _skip_step(self, stats: StepStats) -> bool:
        """Whether the step is skipped (every rank decides the same from the all-reduced sums): a non-finite loss
        or gradient norm on some rank, counted towards nest_trainer.max_consecutive_nonfinite, or no masked token
        on any rank."""
        st = self.state
        nonfinite_loss = float(stats.nonfinite) > 0
        nonfinite_grad = float(stats.nonfinite_grad) > 0
        if not (nonfinite_loss or nonfinite_grad):
            if float(stats.empty_mask) < float(stats.micro_batches):
                return False
            st.skipped_empty += 1
            log.warning("no masked token in any batch of this step (batch %d): step skipped", st.total_batch_idx)
            return True
        what = "loss" if nonfinite_loss else "gradient norm"
        st.skipped_nonfinite += 1
        st.skipped_nonfinite_grad += 0 if nonfinite_loss else 1
        st.nonfinite_in_a_row += 1
        log.warning("non-finite %s at batch %d (after global step %d): step skipped on every rank (%d in a row, %d "
                    "in total)", what, st.total_batch_idx, st.global_step, st.nonfinite_in_a_row, st.skipped_nonfinite)
        self.metrics_writer.log({"skipped_steps": st.skipped_nonfinite,
                                 "skipped_nonfinite_grad": st.skipped_nonfinite_grad}, st.global_step)
        limit = self.s.nest_trainer.max_consecutive_nonfinite
        if st.nonfinite_in_a_row >= limit:
            self.stop_reason = "nonfinite"
            last = self.ckpt.last_model_path or "none written yet"
            raise NonFiniteLossError(
                f"{st.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or gradient norm (limit "
                f"nest_trainer.max_consecutive_nonfinite={limit}); stopped at "
                f"global step {st.global_step}. The last good checkpoint is untouched: {last}. Lower the "
                f"learning rate, use precision=32 or bf16-mixed, or check the data.")
        return True

    def _optimizer_step(self, stats: StepStats, micro: int) -> bool:
        """One optimizer step from the accumulated gradients, unless `_skip_step` says otherwise. `stats` is the
        host copy of the all-reduced sums."""
        st = self.state
        if self._skip_step(stats):
            self.optimizer.zero_grad(set_to_none=True)
            if self._unscaled:
                self.scaler.update()  # ends this step's unscale_ (an inf found lowers the scale)
            return False
        st.nonfinite_in_a_row = 0
        self._step_lr = self._lr()
        self._clip(self._grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        st.global_step += 1
        return True

    def _log_step(self, stats: StepStats, grad_norm, step_time: float) -> None:
        st = self.state
        loss = stats.mean_loss()
        audio_per_s = self._audio_since_log / max(1e-9, self._train_time_since_log)
        lr = self._step_lr  # the rate this step used (NeMo logs it before the scheduler moves on)
        metrics = {
            "train_loss": loss,
            "learning_rate": lr,
            "global_step": st.global_step,
            "epoch": st.epoch,
            "grad_norm": grad_norm,
            "throughput": audio_per_s,  # audio seconds trained per wall second, all ranks together
            "throughput_per_device": audio_per_s / self.info.world_size,
            "step_time": step_time if self.s.exp_manager.log_step_timing else None,
            "masked_fraction": stats.masked_fraction(),
            "skipped_steps": st.skipped_nonfinite,
            "skipped_nonfinite_grad": st.skipped_nonfinite_grad,
            "rejected_cuts": st.rejected_cuts,
        }
        # masked_acc, chances, this step's all-rank target_perplexity / coverage, the cumulative ones, the alarm
        health = step_metrics(self.health, stats.health)
        metrics.update(health)
        metrics.update(self.cum_counts.metrics())
        self.alarm.check_coverage(st.global_step, health.get("target_attainable_coverage"),
                                  health.get("target_coverage"))
        metrics.update(self.alarm.flags())
        metrics.update(self.telemetry.metrics())
        if torch.cuda.is_available() and self.device.type == "cuda":
            metrics["gpu_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.last_metrics["train_loss"] = loss
        self.metrics_writer.log(metrics, st.global_step)
        acc = health.get("masked_acc")
        self.bar.update(st.global_step, loss, lr, (self._audio_per_s_ema or audio_per_s) / 3600.0, acc=acc)
        if not (self.t.enable_progress_bar and self.info.is_global_zero):
            log.info("epoch %d step %d: train_loss=%.4f masked_acc=%s (chance %s) lr=%.3e grad_norm=%s "
                     "audio_h/s=%.3g", st.epoch, st.global_step, loss, "n/a" if acc is None else f"{acc:.4f}",
                     f"{health['chance_majority']:.4f}" if "chance_majority" in health else "n/a", lr,
                     "n/a" if grad_norm is None else f"{float(grad_norm):.3f}", audio_per_s / 3600.0)
        self._train_time_since_log = 0.0
        self._audio_since_log = 0.0

