"""egs/mini end to end, as real subprocesses: the whole recipe, a rerun that skips what is done, and runs killed
during stage 1 and during training that resume and end with the same outputs as the uninterrupted run.

One uninterrupted run (the module fixture) is the reference for the others; they only read its data folder.
"""

import glob
import gzip
import json
import os
import re
import signal
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(REPO, "egs", "mini", "run.sh")
LIBRILIGHT = os.path.join(REPO, "egs", "librilight", "run.sh")
# as `make demo` runs it: the virtual environment first on PATH
ENV = dict(os.environ, PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ.get("PATH", ""))


def run(cmd, timeout=400, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=ENV, **kw)
    return r


def explain(r):
    return f"exit {r.returncode}\n--- stderr (tail) ---\n{r.stderr[-4000:]}\n--- stdout (tail) ---\n{r.stdout[-2000:]}"


def start(cmd):
    """A run we may kill: its own process group, so the kill reaches python, torchrun and their children."""
    return subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, start_new_session=True)


def kill_when(proc, condition, timeout=300):
    t0 = time.time()
    while not condition():
        if proc.poll() is not None:
            out = proc.stdout.read()
            pytest.fail(f"the run ended (exit {proc.returncode}) before it could be killed:\n{out[-3000:]}")
        if time.time() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("timed out waiting for the moment to kill the run")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def gz_text(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    t0 = time.time()
    r = run([MINI, "--data-dir", root / "data", "--exp-dir", root / "exp"], cwd=REPO)
    return root, r, time.time() - t0


def test_mini_runs_every_stage_and_ends_with_the_summary_and_the_plot(mini):
    root, r, seconds = mini
    assert r.returncode == 0, explain(r)
    data, run_dir = root / "data", root / "exp" / "nest_tiny"
    for n in range(8):
        assert re.search(rf"\(run\.sh:\d+:main\) Stage {n}:", r.stderr), f"stage {n} did not run\n{explain(r)}"
    # the generated corpus is in LibriLight's layout, with LibriLight's JSON keys
    flacs = sorted(glob.glob(str(data / "corpus" / "small" / "*" / "*" / "*.flac")))
    assert len(flacs) == 16
    meta = json.load(open(flacs[0][: -len(".flac")] + ".json"))
    assert set(meta) == {"speaker", "book_meta", "snr", "voice_activity"}
    # stage 1: every file prepared, none rejected
    recs = gz_text(data / "manifests" / "librilight_recordings_small.jsonl.gz").splitlines()
    assert len(recs) == 16 and (data / "manifests" / "rejects_small.tsv").read_text().count("\n") == 1
    # stage 3: windows within bounds; validation holds out whole speakers
    def speakers(path):
        return {json.loads(line)["supervisions"][0]["speaker"] for line in gz_text(path).splitlines()}

    train_spk, val_spk = speakers(data / "cuts" / "train.jsonl.gz"), speakers(data / "cuts" / "val.jsonl.gz")
    assert len(val_spk) == 1 and len(train_spk) == 3 and not train_spk & val_spk
    durations = [json.loads(line)["duration"] for line in gz_text(data / "cuts" / "train.jsonl.gz").splitlines()]
    assert all(1.0 <= d <= 10.0 + 1e-6 for d in durations)
    assert (data / "noise" / "noise_cuts.jsonl.gz").exists()
    assert (data / "bucket_bins.txt").read_text().startswith("model.train_ds.bucket_duration_bins=[")
    # stages 6-7: checkpoints, validation every 10 steps, exports, the plot, and the printed summary
    val = [json.loads(line) for line in open(run_dir / "metrics.jsonl") if '"val_loss"' in line]
    assert [row["step"] for row in val] == [10, 20]
    assert (run_dir / "export" / "model.nemo").stat().st_size > 100_000
    assert (run_dir / "export" / "encoder.ckpt").stat().st_size > 100_000
    png = run_dir / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (run_dir / "summary.txt").read_text()
    assert summary in r.stdout  # printed at the end, as well as kept
    assert re.search(r"steps:\s+20\b", summary)
    assert re.search(r"val_loss:\s+\d+\.\d+ at step 20", summary)
    assert re.search(r"audio used:\s+training 0\.\d+ h", summary) and str(png) in summary
    print(f"egs/mini took {seconds:.0f} s")


def test_rerun_skips_the_finished_stages(mini):
    root, first, _ = mini
    assert first.returncode == 0, explain(first)
    files = [p for p in root.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    r = run([MINI, "--data-dir", root / "data", "--exp-dir", root / "exp"], cwd=root)  # from another folder too
    assert r.returncode == 0, explain(r)
    for n in (0, 1, 2, 3, 5, 6, 7):
        assert re.search(rf"Stage {n}: [^\n]*: skipped, up to date", r.stderr), f"stage {n}\n{explain(r)}"
    assert "not done yet" not in r.stderr
    changed = [p for p in files if p.stat().st_mtime_ns != before[p]]
    assert changed == []


def test_killed_in_stage_1_resumes_to_the_same_manifests(mini, tmp_path):
    root, first, _ = mini
    assert first.returncode == 0, explain(first)
    # One file per chunk and full decoding, so that stage 1 takes long enough to be killed half way.
    cmd = [LIBRILIGHT, "--corpus-dir", root / "data" / "corpus", "--musan-dir", "", "--subsets", "small",
           "--data-dir", tmp_path / "data", "--exp-dir", tmp_path / "exp", "--stage", "1", "--stop-stage", "1",
           "--nj", "1", "--prepare-chunk-size", "1", "--check-audio", "full"]
    parts = tmp_path / "data" / "manifests" / ".librilight_small.parts"
    proc = start(cmd)
    kill_when(proc, lambda: len(glob.glob(str(parts / "*.done"))) >= 3)
    done_before = len(glob.glob(str(parts / "*.done")))
    assert 3 <= done_before < 16
    assert not (tmp_path / "data" / "manifests" / "librilight_cuts_small.jsonl.gz").exists()
    assert not (tmp_path / "data" / ".done" / "stage1.done").exists()

    r = run(cmd)
    assert r.returncode == 0, explain(r)
    assert "an earlier run did not finish; continuing it" in r.stderr
    reused = int(re.search(r"(\d+) of 16 chunks reused", r.stderr).group(1))
    assert reused >= done_before
    ours, ref = tmp_path / "data" / "manifests", root / "data" / "manifests"
    for kind in ("recordings", "supervisions", "cuts"):
        name = f"librilight_{kind}_small.jsonl.gz"
        assert gz_text(ours / name) == gz_text(ref / name), name
    assert (ours / "rejects_small.tsv").read_text() == (ref / "rejects_small.tsv").read_text()
    assert not parts.exists()


def test_killed_in_training_resumes_to_the_same_model(mini, tmp_path):
    torch = pytest.importorskip("torch")
    root, first, _ = mini
    assert first.returncode == 0, explain(first)
    cmd = [MINI, "--data-dir", root / "data", "--exp-dir", tmp_path / "exp", "--stage", "6", "--stop-stage", "6"]
    ckpts = tmp_path / "exp" / "nest_tiny" / "checkpoints"
    proc = start(cmd)
    kill_when(proc, lambda: any("step=10" in os.path.basename(p) for p in glob.glob(str(ckpts / "*.ckpt"))))
    assert not glob.glob(str(ckpts / "*step=20*"))

    r = run(cmd)
    assert r.returncode == 0, explain(r)
    assert re.search(r"resum\w+ .*step[ =]10", r.stderr + r.stdout, re.I), explain(r)

    def final(run_dir):
        path = max(glob.glob(str(run_dir / "checkpoints" / "*step=20*last.ckpt")), key=os.path.getmtime)
        return torch.load(path, map_location="cpu", weights_only=True)

    ref, ours = final(root / "exp" / "nest_tiny"), final(tmp_path / "exp" / "nest_tiny")
    assert ours["global_step"] == ref["global_step"] == 20
    assert ours["state_dict"].keys() == ref["state_dict"].keys()
    different = [k for k in ref["state_dict"] if not torch.equal(ref["state_dict"][k], ours["state_dict"][k])]
    assert different == []

    def val_losses(run_dir):
        rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl") if '"val_loss"' in line]
        return {row["step"]: row["val_loss"] for row in rows}

    assert val_losses(tmp_path / "exp" / "nest_tiny") == val_losses(root / "exp" / "nest_tiny")
