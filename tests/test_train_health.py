"""Learning-health metrics (nest_ssl/train/health.py): hand-computed values, counts summed over two gloo ranks,
cumulative figures equal after SIGKILL and resume, and the collapse alarm on a run that learns nothing and on one
that learns."""

import logging
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import test_train_run as ttr  # the training-run helpers (module import: its tests are not collected twice)
from nest_ssl.checkpoint import load_checkpoint
from nest_ssl.config import ConfigError
from nest_ssl.models.nest import StepOutput
from nest_ssl.train.health import (CollapseAlarm, CumulativeCounts, HealthLayout, HealthSettings,
                                   attainable_coverage, code_counts, coverage, entropy, majority_rate, masked_correct,
                                   perplexity, step_metrics, validation_metrics)
from nest_ssl.train.loggers import read_metrics, series
from nest_ssl.train.trainer_config import parse_nest_trainer, parse_run_config


def _out(tokens, lengths, log_probs=None, selected=None):
    """A StepOutput as the model gives it (only the fields the health figures read are meaningful): tokens (B, T')
    or (B, T', H), log_probs (B, T', C[, H]) of every token, selected (B, T') the masked ones (none if None)."""
    tokens = torch.as_tensor(tokens)
    lengths = torch.as_tensor(lengths)
    B, T = tokens.shape[:2]
    if log_probs is None:
        log_probs = torch.zeros(B, T, 4, *tokens.shape[2:])
    selected = torch.zeros(B, T, dtype=torch.bool) if selected is None else selected
    valid = torch.arange(T)[None, :] < lengths[:, None]
    z = torch.zeros(())
    return StepOutput(loss=z, log_probs=log_probs, encoded_len=lengths, masks=z, tokens=tokens, selected=selected,
                      valid=valid, num_masked_tokens=selected.sum(), num_tokens=valid.sum(),
                      empty_mask=selected.sum() == 0)


def _scatter(shape, positions, rows, fill=-5.0):
    """Full log_probs of `shape` (B, T', C[, H]) holding `rows` (N, C[, H]) at the (b, t) `positions` (the masked
    tokens), and the bool (B, T') mask of those positions."""
    full = torch.full(shape, fill)
    selected = torch.zeros(shape[:2], dtype=torch.bool)
    for (b, t), row in zip(positions, rows):
        full[b, t] = row
        selected[b, t] = True
    return full, selected


# -------------------------------------------------------------------------------------------------------------
# Pure figures against hand-computed values


def test_counts_and_figures_by_hand():
    # Two utterances of 4 token slots, the second with 2 valid tokens; its padding (codes 4, 4) must not count.
    tokens = torch.tensor([[1, 1, 2, 3], [0, 1, 4, 4]])  # (B, T') squeezed: one codebook
    valid = torch.arange(4)[None, :] < torch.tensor([4, 2])[:, None]
    c = code_counts(tokens.reshape(-1), num_classes=5, num_books=1, weights=valid.reshape(-1))
    assert c.tolist() == [[1.0, 3.0, 1.0, 1.0, 0.0]]
    # p = (1/6, 1/2, 1/6, 1/6, 0): H = 3 * (1/6) ln 6 + (1/2) ln 2 = (1/2) ln 12
    assert entropy(c).item() == pytest.approx(0.5 * math.log(12))
    assert perplexity(c).item() == pytest.approx(math.sqrt(12))
    assert coverage(c).item() == pytest.approx(4 / 5)
    assert attainable_coverage(c).item() == pytest.approx(4 / 5)  # min(5 codes, 6 tokens) = 5
    assert majority_rate(c).item() == pytest.approx(3 / 6)
    # 3 tokens of 8 codes: at most 3 distinct; 2 used -> 2/3 of what these tokens could cover
    few = code_counts(torch.tensor([5, 5, 7]), num_classes=8, num_books=1)
    assert coverage(few).item() == pytest.approx(2 / 8) and attainable_coverage(few).item() == pytest.approx(2 / 3)
    assert entropy(torch.zeros(1, 4)).item() == 0.0  # no counts: 0, not NaN
    with pytest.raises((IndexError, RuntimeError)):  # a code outside the codebook
        code_counts(torch.tensor([5]), num_classes=5, num_books=1)


def test_two_codebooks_and_accuracy_by_hand():
    # 3 masked tokens, 2 codebooks, 4 classes; log_probs (N, C, H)
    lp = torch.full((3, 4, 2), -5.0)
    lp[0, 2, 0] = lp[1, 1, 0] = lp[2, 3, 0] = 0.0  # book 0 predicts 2, 1, 3
    lp[0, 0, 1] = lp[1, 0, 1] = lp[2, 0, 1] = 0.0  # book 1 always predicts 0
    targets = torch.tensor([[2, 0], [1, 1], [0, 0]])
    assert masked_correct(lp, targets).tolist() == [2.0, 2.0]
    # squeezed single book: (N, C) and (N,)
    assert masked_correct(lp[:, :, 0], targets[:, 0]).tolist() == [2.0]
    c = code_counts(targets, num_classes=4, num_books=2)
    assert c.tolist() == [[1, 1, 1, 0], [2, 1, 0, 0]]
    assert coverage(c).tolist() == pytest.approx([3 / 4, 2 / 4])
    assert entropy(c).tolist() == pytest.approx([math.log(3), -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)])

    layout = HealthLayout(num_classes=4, num_books=2)
    buf = layout.zeros()
    tokens = torch.tensor([[[2, 0], [1, 1], [0, 0], [3, 3]]])  # (1, 4, 2), 3 valid, the first 3 masked (targets)
    full, selected = _scatter((1, 4, 4, 2), [(0, 0), (0, 1), (0, 2)], lp)
    assert masked_correct(full.reshape(4, 4, 2), tokens.reshape(4, 2), selected.reshape(4)).tolist() == [2.0, 2.0]
    layout.add(buf, _out(tokens, [3], full, selected), count="valid")
    m = step_metrics(layout, buf)
    assert m["masked_acc"] == pytest.approx(4 / 6)  # mean over books of 2/3 and 2/3
    assert m["chance_uniform"] == 0.25
    assert m["chance_majority"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert m["target_coverage"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert m["target_coverage_book0"] == pytest.approx(3 / 4) and m["target_coverage_book1"] == pytest.approx(2 / 4)
    assert m["target_perplexity_book0"] == pytest.approx(3.0)
    assert m["target_attainable_coverage"] == pytest.approx(2 / 3)  # the worse book: 2 used of 3 tokens

    v = layout.zeros()
    layout.add(v, _out(tokens, [3], full, selected), count="masked")
    vm = validation_metrics(layout, v, val_loss=1.0)
    floor = float(entropy(c).mean())
    assert vm["val_floor"] == pytest.approx(floor) and vm["val_loss_minus_floor"] == pytest.approx(1.0 - floor)
    assert vm["val_acc"] == pytest.approx(4 / 6) and vm["val_floor_tokens"] == 3
    assert vm["val_floor_plugin"] == pytest.approx(floor)
    # with training counts, the floor is the validation codes' NLL under the (add-1/2) training frequencies
    train = torch.tensor([[6.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 5.0]], dtype=torch.float64)
    vm = validation_metrics(layout, v, val_loss=1.0, train_counts=train)
    q = (train + 0.5) / (train.sum(-1, keepdim=True) + 2.0)
    counts = layout.counts(v)
    by_hand = [float(-(counts[h] * q[h].log()).sum() / counts[h].sum()) for h in range(2)]
    assert vm["val_floor"] == pytest.approx(sum(by_hand) / 2)
    assert vm["val_loss_minus_floor"] == pytest.approx(1.0 - sum(by_hand) / 2)
    assert vm["val_floor_plugin"] == pytest.approx(floor) and vm["val_floor"] > floor  # plug-in is the lower bound
    # a batch without masked tokens adds codes (training) but no accuracy
    empty = layout.zeros()
    layout.add(empty, _out(tokens, [3]), count="valid")
    assert "masked_acc" not in step_metrics(layout, empty) and float(layout.counts(empty).sum()) == 6


def test_cumulative_counts_state_round_trip(caplog):
    cum = CumulativeCounts(num_classes=4, num_books=1)
    cum.add(code_counts(torch.tensor([0, 0, 1]), 4, 1))
    cum.add(code_counts(torch.tensor([2, 0]), 4, 1))
    m = cum.metrics()
    p = torch.tensor([3, 1, 1]) / 5
    assert m["cum_target_coverage"] == pytest.approx(3 / 4) and m["cum_target_tokens"] == 5
    assert m["cum_target_entropy"] == pytest.approx(float(-(p * p.log()).sum()))
    again = CumulativeCounts(num_classes=4, num_books=1)
    again.load_state_dict(cum.state_dict())
    assert again.metrics() == m
    other = CumulativeCounts(num_classes=8, num_books=1)  # a different codebook size: starts again, with a warning
    logger = logging.getLogger("nest_ssl.train")
    logger.addHandler(caplog.handler)
    try:
        other.load_state_dict(cum.state_dict())
    finally:
        logger.removeHandler(caplog.handler)
    assert other.metrics() == {} and "start again from zero" in caplog.text


def test_alarm_logic(caplog):
    s = HealthSettings(min_coverage=0.2, floor_margin=0.05, floor_patience_steps=100)
    a = CollapseAlarm(s)
    logger = logging.getLogger("nest_ssl.train")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="nest_ssl.train")
    try:
        a.check_floor(50, val_loss=5.0, floor=5.0)  # before the patience: no verdict
        assert a.flags()["collapse_alarm"] == 0
        a.check_floor(100, val_loss=4.97, floor=5.0)  # only 0.03 below the floor
        assert a.flags() == {"alarm_low_coverage": 0.0, "alarm_at_floor": 1.0, "collapse_alarm": 1.0}
        assert "COLLAPSE ALARM (loss floor) at step 100" in caplog.text
        caplog.clear()
        a.check_floor(200, val_loss=4.97, floor=5.0)  # still on: no second warning
        assert "COLLAPSE ALARM" not in caplog.text
        a.check_floor(300, val_loss=4.90, floor=5.0)  # 0.1 below: cleared
        assert a.flags()["alarm_at_floor"] == 0 and "cleared" in caplog.text
        a.check_coverage(310, attainable=0.5)
        assert a.flags()["collapse_alarm"] == 0
        a.check_coverage(320, attainable=0.1, coverage_value=0.01)
        assert a.flags()["alarm_low_coverage"] == 1 and "COLLAPSE ALARM (codebook use) at step 320" in caplog.text
        b = CollapseAlarm(s)
        b.load_state_dict(a.state_dict())
        assert b.flags() == a.flags()
        off = CollapseAlarm(HealthSettings(min_coverage=0.0, floor_patience_steps=-1))
        off.check_coverage(1, attainable=0.0)
        off.check_floor(10**6, val_loss=9.0, floor=1.0)
        assert off.flags()["collapse_alarm"] == 0
    finally:
        logger.removeHandler(caplog.handler)


def test_health_settings_from_the_config():
    from test_train_config import nest_cfg

    s = parse_run_config(nest_cfg())
    assert s.nest_trainer.health == HealthSettings()  # NeMo's yaml has no nest_trainer section: defaults
    s = parse_run_config(nest_cfg("+nest_trainer.health.min_coverage=0.3",
                                  "+nest_trainer.health.floor_patience_steps=5"))
    assert s.nest_trainer.health.min_coverage == 0.3 and s.nest_trainer.health.floor_patience_steps == 5 and s.nest_trainer.health.floor_margin == 0.05
    with pytest.raises(ConfigError, match="did you mean 'nest_trainer.health.floor_margin'"):
        parse_run_config(nest_cfg("+nest_trainer.health.floor_margn=0.1"))
    with pytest.raises(ConfigError, match="min_coverage=2.*at most 1"):
        parse_nest_trainer({"health": {"min_coverage": 2}})
    with pytest.raises(ConfigError, match="floor_patience_steps"):
        parse_nest_trainer({"health": {"floor_patience_steps": -5}})


# -------------------------------------------------------------------------------------------------------------
# Two gloo ranks: the per-code counts are summed (a max over ranks would be wrong)


def _rank_worker(rank, port, batches, results):
    from nest_ssl.train.distributed import DistInfo, all_reduce_sum

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, local_rank=rank, world_size=2, device=torch.device("cpu"))
        layout = HealthLayout(num_classes=6, num_books=1)
        buf = layout.zeros()
        tokens, lengths, lp, selected = batches[rank]
        layout.add(buf, _out(tokens, lengths, lp, selected), count="valid")
        all_reduce_sum(info, buf)
        cum = CumulativeCounts(6, 1)
        cum.add(layout.counts(buf))
        results[rank] = (buf.clone(), step_metrics(layout, buf), cum.metrics())
    finally:
        dist.destroy_process_group()


def test_counts_are_summed_over_two_gloo_ranks():
    torch.manual_seed(3)
    # rank 0 uses codes {0, 1}, rank 1 codes {1, 2, 5}: the union has 4 codes; code 1 is common to both.
    # the masked tokens: rank 0 at (0, 0), (0, 1) (codes 0, 1); rank 1 at (0, 0), (0, 2), (1, 0) (codes 1, 5, 5)
    b0 = (torch.tensor([[0, 1, 1, 0, 3]]), torch.tensor([4]),
          *_scatter((1, 5, 6), [(0, 0), (0, 1)], torch.randn(2, 6)))
    b1 = (torch.tensor([[1, 2, 5], [5, 5, 0]]), torch.tensor([3, 2]),
          *_scatter((2, 3, 6), [(0, 0), (0, 2), (1, 0)], torch.randn(3, 6)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.start_processes(_rank_worker, args=(port, [b0, b1], results), nprocs=2, start_method="spawn")
    union_ids = torch.tensor([0, 1, 1, 0, 1, 2, 5, 5, 5])
    union = code_counts(union_ids, 6, 1)
    layout = HealthLayout(num_classes=6, num_books=1)
    for rank in (0, 1):
        buf, m, cm = results[rank]
        assert torch.equal(layout.counts(buf), union)  # [2, 3, 1, 0, 0, 3]: a sum, not a max
        assert m["target_coverage"] == pytest.approx(4 / 6)
        assert m["target_perplexity"] == pytest.approx(float(perplexity(union)))
        correct = sum(float(masked_correct(lp.reshape(-1, 6), tok.reshape(-1), sel.reshape(-1)))
                      for tok, _, lp, sel in (b0, b1))
        assert m["masked_acc"] == pytest.approx(correct / 5)
        assert cm["cum_target_tokens"] == 9
    assert results[0][1] == results[1][1]  # every rank computes the same figures


# -------------------------------------------------------------------------------------------------------------
# Real training runs (the tiny config on CPU)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("health")
    for args in (["--num-train", "24", "--num-val", "8", "--min-seconds", "1.5", "--max-seconds", "3"],
                 ["--out-dir", "data/four", "--num-train", "4", "--num-val", "1", "--min-seconds", "3",
                  "--max-seconds", "3"]):
        subprocess.run([sys.executable, str(ttr.MAKE_DATA), *args], cwd=d, check=True, env=ttr.ENV,
                       capture_output=True)
    return d


HEALTH_KEYS = ("cum_target_coverage", "cum_target_entropy", "cum_target_perplexity", "cum_target_tokens",
               "target_perplexity", "target_coverage", "masked_acc", "chance_majority", "collapse_alarm",
               "alarm_at_floor", "val_floor", "val_acc", "val_loss_minus_floor")


@pytest.mark.slow  # a kill-and-resume run (tens of seconds on 2 cores): `make test-slow`
def test_cumulative_metrics_survive_sigkill_and_resume(workdir):
    common = ["trainer.max_steps=8", "trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null",
              "trainer.log_every_n_steps=1", "+trainer.deterministic=true",
              "++exp_manager.checkpoint_callback_params.every_n_train_steps=2",
              "+nest_trainer.health.floor_patience_steps=3", *ttr.QUIET]  # the alarm turns on at step 3
    ref = ttr.run(ttr.train_cmd(*common, "exp_manager.exp_dir=ref"), workdir)
    assert ref.returncode == 0, ref.stderr[-3000:]

    cmd = ttr.train_cmd(*common, "exp_manager.exp_dir=killed")
    ckdir = workdir / "killed" / ttr.RUN_NAME / "checkpoints"
    ttr.kill_at_checkpoint(cmd, workdir, ckdir, "*step=4-last.ckpt")
    again = ttr.run(cmd, workdir)
    assert again.returncode == 0 and "resumed from" in again.stderr, again.stderr[-3000:]

    ref_rows = read_metrics(workdir / "ref" / ttr.RUN_NAME)
    got_rows = read_metrics(workdir / "killed" / ttr.RUN_NAME)
    ref_cum = series(ref_rows, "cum_target_tokens")
    assert sorted(ref_cum) == list(range(1, 9)) and all(ref_cum[s] < ref_cum[s + 1] for s in range(1, 8))
    for key in HEALTH_KEYS:
        assert series(got_rows, key) == series(ref_rows, key), key  # every step, the resumed run's values win
    assert series(ref_rows, "alarm_at_floor")[8] == 1.0  # the alarm state came through the resume too
    a = load_checkpoint(next((workdir / "ref" / ttr.RUN_NAME / "checkpoints").glob("*-last.ckpt")))
    b = load_checkpoint(next(ckdir.glob("*-last.ckpt")))
    ca, cb = a["nest_ssl"]["health"]["cumulative"]["counts"], b["nest_ssl"]["health"]["cumulative"]["counts"]
    assert torch.equal(ca, cb) and float(ca.sum()) == ref_cum[8]
    assert a["nest_ssl"]["health"]["alarm"] == b["nest_ssl"]["health"]["alarm"] == {"low_coverage": False,
                                                                                   "at_floor": True}


# A degenerate but honest learning problem: 4 utterances (train = validation), 16 codes, short mask blocks, no
# augmentation or dropout. With lr=0.5 the model memorises the utterances and val_loss ends far (more than 1 nat
# with seeds 0-2) below the floor by step 60; with lr=1e-6 (0 is refused) it learns nothing.
LEARNABLE = ["model.train_ds.manifest_filepath=data/four/train_manifest.json",
             "model.validation_ds.manifest_filepath=data/four/train_manifest.json", "model.num_classes=16",
             "model.optim.sched.warmup_steps=20", "model.train_ds.batch_augmentor.prob=0",
             "model.validation_ds.batch_augmentor.prob=0", "model.encoder.dropout=0",
             "model.encoder.dropout_pre_encoder=0", "model.encoder.dropout_att=0", "model.masking.block_size=16",
             "model.masking.mask_prob=0.03", "trainer.max_steps=60", "trainer.val_check_interval=20",
             "trainer.check_val_every_n_epoch=null", "trainer.log_every_n_steps=10", "+trainer.deterministic=true",
             "exp_manager.create_checkpoint_callback=false", "+nest_trainer.health.floor_patience_steps=50",
             *ttr.QUIET]


def _learnable_run(workdir, lr, exp, *extra):
    cmd = [sys.executable, str(ttr.TRAIN), "--config-name", "nest_tiny", *LEARNABLE, f"model.optim.lr={lr}",
           f"exp_manager.exp_dir={exp}", *extra]
    p = ttr.run(cmd, workdir)
    assert p.returncode == 0, p.stderr[-3000:]
    return p, read_metrics(workdir / exp / ttr.RUN_NAME)


def test_collapse_alarm_fires_on_a_run_that_learns_nothing(workdir):
    # lr > 0 and >= min_lr (both checked): the rate stays at 1e-6. The verdict after 20 steps instead of 50.
    p, rows = _learnable_run(workdir, 1e-6, "frozen", "trainer.max_steps=20", "trainer.val_check_interval=10",
                             "++nest_trainer.health.floor_patience_steps=20")
    gap = series(rows, "val_loss_minus_floor")
    assert sorted(gap) == [10, 20] and gap[20] > 0  # the initial model, above the floor
    alarm = series(rows, "collapse_alarm")
    assert alarm[20] == 1.0 and series(rows, "alarm_at_floor")[20] == 1.0
    assert alarm[10] == 0.0  # before floor_patience_steps: no verdict
    assert "COLLAPSE ALARM (loss floor) at step 20" in p.stderr


def test_collapse_alarm_stays_quiet_on_a_run_that_learns(workdir):
    p, rows = _learnable_run(workdir, 0.5, "learns")
    gap = series(rows, "val_loss_minus_floor")
    assert gap[60] < -0.5, gap  # far below the context-free floor
    assert series(rows, "val_acc")[60] > series(rows, "val_chance_majority")[60]
    assert set(series(rows, "collapse_alarm").values()) == {0.0}
    assert "COLLAPSE ALARM" not in p.stderr


def test_recipe_summary_shows_floor_chance_and_alarm(tmp_path):
    import json

    rows = [{"step": 10, "train_loss": 6.5, "masked_acc": 0.01, "chance_majority": 0.09, "chance_uniform": 1 / 8192,
             "cum_target_coverage": 0.25, "cum_target_perplexity": 392.4, "cum_target_tokens": 5000.0,
             "collapse_alarm": 0.0, "alarm_at_floor": 0.0, "alarm_low_coverage": 0.0},
            {"step": 10, "val_loss": 6.01, "val_floor": 6.0, "val_loss_minus_floor": 0.01, "val_floor_tokens": 900.0,
             "val_acc": 0.02, "val_chance_majority": 0.08, "collapse_alarm": 1.0, "alarm_at_floor": 1.0,
             "alarm_low_coverage": 0.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = ttr.REPO / "local" / "summary.py"
    p = subprocess.run([sys.executable, str(script), "summary", str(tmp_path), "--train-cuts", "none.jsonl.gz",
                        "--val-cuts", "none.jsonl.gz"], capture_output=True, text=True, check=True)
    out = p.stdout
    assert "val_loss - floor = +0.0100 at step 10" in out and "floor 6.0000 nats from 900 validation tokens" in out
    assert "train 0.0100 at step 10 (chance: majority 0.0900, uniform 0.00012)" in out
    assert "validation 0.0200 at step 10 (chance: majority 0.0800)" in out
    assert "25.0% of the codes used since step 0, perplexity 392.4 over 5000 tokens" in out
    assert "ALARM:" in out and "not below the context-free floor (from step 10, still on)" in out
