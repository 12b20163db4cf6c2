#!/usr/bin/env python3
"""Training throughput: audio seconds trained per wall second, with the real dataloader and with one pre-loaded
in-memory batch, in the same run. Their ratio says how much the input pipeline costs.

    python bench/train_throughput.py                      # tiny config, CPU, fp32 (seconds)
    python bench/train_throughput.py --gpu                # 17-layer nest_fast-conformer, bf16-mixed, one GPU

Both measurements go through nest-ssl's Trainer (forward, backward, optimizer and scheduler steps, the loss
bookkeeping), on synthetic speech-like audio written by recipes/nest/make_dummy_data.py. Only training time is
counted (no validation, no checkpoints); the first --warmup steps of each measurement are not.
On a GPU the figure is also given as audio hours per hour per GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class InMemoryLoader:
    """Yields batches loaded (and moved to the device) beforehand: the dataloader's cost removed. They are the
    batches the real dataloader yields first, in its order, so both measurements train on the same audio."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def measure(trainer, loader, steps: int, warmup: int) -> tuple[float, float, int]:
    """(audio seconds per second, seconds per step, steps) of `steps` training steps after `warmup` ones."""
    import torch

    def fit_for(n: int) -> None:
        trainer.t.max_steps = trainer.state.global_step + n
        trainer.stop_reason = None
        trainer.fit()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()

    trainer.train_loader = loader
    st = trainer.state
    fit_for(warmup)
    trainer._audio_since_log = 0.0
    trainer._train_time_since_log = 0.0
    start_step = st.global_step
    fit_for(steps)
    done = st.global_step - start_step
    secs = trainer._train_time_since_log
    return trainer._audio_since_log / max(secs, 1e-9), secs / max(done, 1), done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="17-layer model, bf16-mixed, on cuda:0")
    p.add_argument("--config-name", default=None, help="default: nest_tiny (CPU) / nest_fast-conformer (--gpu)")
    p.add_argument("--precision", default=None, help="default: 32 (CPU) / bf16-mixed (--gpu)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's (tiny: 4) / 32 (--gpu)")
    p.add_argument("--num-workers", type=int, default=None, help="dataloader workers (default: 0 CPU, 8 GPU)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 20 CPU, 30 GPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both measurements; medians reported")
    p.add_argument("--data-dir", default=None, help="reuse dummy data here (default: a temporary folder)")
    a = p.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1" if not a.gpu else "4")
    import torch

    from nest_ssl.config import load_config
    from nest_ssl.train.distributed import DistInfo
    from nest_ssl.train.run import build_trainer
    from nest_ssl.train.trainer_config import parse_run_config

    if a.gpu and not torch.cuda.is_available():
        print("--gpu: no CUDA device here", file=sys.stderr)
        return 2
    config_name = a.config_name or ("nest_fast-conformer" if a.gpu else "nest_tiny")
    precision = a.precision or ("bf16-mixed" if a.gpu else "32")
    batch_size = a.batch_size or (32 if a.gpu else None)
    workers = a.num_workers if a.num_workers is not None else (8 if a.gpu else 0)
    steps = a.steps or (30 if a.gpu else 20)

    tmp = None
    data = Path(a.data_dir) if a.data_dir else None
    if data is None:
        tmp = tempfile.TemporaryDirectory()
        data = Path(tmp.name)
    if not (data / "train_manifest.json").exists():
        n, lo, hi = (32 * 40, 8.0, 16.0) if a.gpu else (4 * 26, 2.0, 4.0)
        subprocess.run([sys.executable, str(REPO / "recipes/nest/make_dummy_data.py"), "--out-dir", str(data),
                        "--num-train", str(n), "--num-val", "2", "--min-seconds", str(lo), "--max-seconds", str(hi)],
                       check=True, capture_output=True)
    overrides = [
        f"model.train_ds.manifest_filepath={data}/train_manifest.json",
        f"model.validation_ds.manifest_filepath={data}/val_manifest.json",
        f"model.train_ds.num_workers={workers}",
        "model.train_ds.drop_last=false",
        f"trainer.precision={precision}", "trainer.devices=1", "trainer.strategy=auto",
        f"trainer.accelerator={'gpu' if a.gpu else 'cpu'}", "trainer.sync_batchnorm=false",
        "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1000000", "trainer.val_check_interval=1000000", "trainer.max_epochs=-1",
        "+trainer.limit_val_batches=0", "exp_manager.create_checkpoint_callback=false",
        "exp_manager.create_tensorboard_logger=false",
    ]
    if batch_size:
        overrides.append(f"model.train_ds.batch_size={batch_size}")
    cfg = load_config(config_name=config_name, overrides=overrides)
    settings = parse_run_config(cfg)
    device = torch.device("cuda", 0) if a.gpu else torch.device("cpu")
    if a.gpu:
        torch.cuda.set_device(device)
    info = DistInfo(device=device)
    with tempfile.TemporaryDirectory() as logs:
        trainer = build_trainer(cfg, settings, info, log_dir=Path(logs), ckpt_dir=Path(logs) / "ckpt")
        real_loader = trainer.train_loader
        preloaded = []
        for b in real_loader:
            preloaded.append(b.to(device))
            if len(preloaded) == steps + a.warmup:
                break
        if len(preloaded) < steps + a.warmup:
            print(f"the data gives {len(preloaded)} batches per epoch; --steps + --warmup must fit in one epoch",
                  file=sys.stderr)
            return 2
        batch = preloaded[0]
        params = sum(p.numel() for p in trainer.model.parameters())
        print(f"config {config_name} ({params / 1e6:.1f}M parameters), precision {precision}, device "
              f"{torch.cuda.get_device_name(device) if a.gpu else 'cpu'} ({torch.get_num_threads()} threads), "
              f"batches of {batch.audio.shape[0]} utterances, dataloader workers {workers}")
        t0 = time.time()
        mem, real = [], []
        for _ in range(a.rounds):  # interleaved, so that drifts of a shared machine hit both alike
            mem.append(measure(trainer, InMemoryLoader(preloaded), steps, a.warmup))
            real.append(measure(trainer, real_loader, steps, a.warmup))
        trainer.close()
        mem_rate, mem_step, n_mem = sorted(mem)[len(mem) // 2]
        real_rate, real_step, n_real = sorted(real)[len(real) // 2]
    print(f"in-memory batch : {mem_rate:10.1f} audio s/s  ({mem_step * 1000:8.1f} ms/step; median of {a.rounds} x {n_mem} steps)")
    print(f"real dataloader : {real_rate:10.1f} audio s/s  ({real_step * 1000:8.1f} ms/step; median of {a.rounds} x {n_real} steps)")
    print(f"ratio real / in-memory: {real_rate / mem_rate:.3f}  (1.0: the input pipeline costs nothing)")
    # Same work per step in both: the extra time per step with the real loader is time spent waiting for data.
    print(f"waiting for data: {max(0.0, 1.0 - real_rate / mem_rate):.1%} of the training time; real dataloader "
          f"{real_rate / 3600:.4f} audio hours per second")
    if a.gpu:
        print(f"real dataloader : {real_rate:.0f} audio hours per hour per GPU "
              f"(in-memory: {mem_rate:.0f}); peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print(f"(benchmark wall time {time.time() - t0:.1f} s)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
