"""`nest-ssl tune-batch` on the CPU: the memory model fitted to measured step peaks predicts a held-out size, and
the command prints the config lines to paste (real steps of the tiny model, real profiler measurements)."""

import os
import subprocess
import sys

import pytest
import torch

from nest_ssl.config import load_config
from nest_ssl.models import NESTModel
from nest_ssl.optim import build_optimizer
from nest_ssl.train.tune_batch import StepRunner, cpu_step_peak_bytes, format_config_lines, tune_cpu

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_memory_model_predicts_a_held_out_size_within_20_percent():
    cfg = load_config(config_name="nest_tiny")
    model = NESTModel.from_config(cfg.model)
    runner = StepRunner(model, build_optimizer(model.parameters(), cfg.model.optim), sample_rate=16000)
    result = tune_cpu(runner, [2.0, 4.0, 6.0], budget_bytes=2**30, probes=[(1, 1.0), (2, 1.0), (1, 3.0), (2, 3.0)])
    measured = cpu_step_peak_bytes(lambda: runner(4, 4.5))  # outside the probes: twice the batch, longer cuts
    predicted = result.model.peak(4, 4.5) - result.model.static
    assert predicted == pytest.approx(measured, rel=0.2), (predicted / 2**20, measured / 2**20, result.measured)
    # bigger buckets get smaller batches, and each fits the budget by the model
    assert result.batch_sizes == sorted(result.batch_sizes, reverse=True) and result.batch_sizes[-1] >= 1
    for d, b in zip(result.bins, result.batch_sizes):
        assert result.model.peak(b, d) <= 2**30 < result.model.peak(b + 1, d)
    line = format_config_lines(result)
    assert line == ("++model.train_ds.use_bucketing=true ++model.train_ds.bucket_duration_bins=[2,4,6] "
                    f"++model.train_ds.bucket_batch_size=[{','.join(map(str, result.batch_sizes))}]")


def test_command_prints_the_lines_to_paste_and_they_parse(tmp_path):
    p = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "tune-batch", "--config-name", "nest_tiny",
                        "--bins", "1.5,3", "--memory-gb", "0.5", "--max-probe-seconds", "2", "--device", "cpu"],
                       capture_output=True, text=True, env=ENV, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    line = p.stdout.strip().splitlines()[-1]
    assert line.startswith("++model.train_ds.use_bucketing=true ++model.train_ds.bucket_duration_bins=[1.5,3] "
                           "++model.train_ds.bucket_batch_size=[")
    cfg = load_config(config_name="nest_tiny", overrides=line.split())
    from nest_ssl.data.config import parse_data_config

    ds = parse_data_config(cfg.model.train_ds, "model.train_ds")
    assert ds.bins() == [1.5, 3.0] and len(ds.bucket_batch_sizes()) == 2


def test_command_needs_a_budget_on_the_cpu():
    p = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "tune-batch", "--config-name", "nest_tiny",
                        "--bins", "1.5,3", "--device", "cpu"], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 2 and "needs --memory-gb" in p.stderr, p.stderr[-2000:]
