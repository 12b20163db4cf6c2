"""egs/mini end to end, as real subprocesses: the whole recipe (stages 0-13: the generated corpus and labelled set,
the librilight stages, training, export, the downstream evaluation, the labelled ASR sets, fine-tuning the exported
encoder and random init, decoding greedy and with the LM, the table), a rerun that skips what is done, a grid grown
by a seed that trains only that seed, and runs killed during stage 1 and during training that resume and end with
the same outputs as the uninterrupted run.

One uninterrupted run (the module fixture) is the reference for the others; they only read its data folder. Every
run gets the same small options (SMALL): the recipe's defaults are the hour-long demo.
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

# Each test reads the module fixture, a whole egs/mini run (minutes on 2 cores): `make test-slow`.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(REPO, "egs", "mini", "run.sh")
LIBRILIGHT = os.path.join(REPO, "egs", "librilight", "run.sh")
# as `make demo` runs it: the virtual environment first on PATH
ENV = dict(os.environ, PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ.get("PATH", ""))

SPEAKERS, BOOKS, FILES = 4, 1, 2
N_FILES = SPEAKERS * BOOKS * FILES
EVAL_SPEAKERS, EVAL_UTTERANCES = 3, 12
RANDOM_SEEDS = 2
# Stages 9-13 on tiny sets: 2 training speakers, budgets of 8 s and 16 s named as the recipe's, 2 seeds, 4 steps.
# The tokenizer also reads the LM text: so few transcripts miss letters that dev and test have.
ASR_SEEDS = (1, 2)
ASR = ["--asr-train-speakers", 2, "--asr-dev-speakers", 1, "--asr-test-speakers", 1, "--asr-budgets", "10min=8,1h=16",
       "--asr-dev-utterances", 2, "--asr-test-utterances", 3, "--lm-sentences", 300, "--ft-table", "full",
       "--ft-steps", "10min=4,1h=4", "--ft-seeds", " ".join(map(str, ASR_SEEDS)),
       "--ft-tokenizer-opts", "--vocab-size 40", "--ft-tokenizer-lm-text", "true",
       "--ft-opts", "--save-every 2 --batch-size 4", "--decode-opts", "--avg 2 --beam-size 8"]
SMALL = ["--speakers", SPEAKERS, "--books", BOOKS, "--files", FILES, "--eval-speakers", EVAL_SPEAKERS,
         "--eval-utterances", EVAL_UTTERANCES, "--val-speakers", 1,
         "--train-opts", "trainer.max_steps=20 trainer.val_check_interval=10",
         "--eval-opts", f"--threads 1 --epochs 3 --steps 10 --random-seeds {RANDOM_SEEDS}", *ASR]


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
    # stages 0-13 (stages 9-13 fine-tune and decode 8 tiny runs): minutes on 2 shared cores
    r = run([MINI, "--data-dir", root / "data", "--exp-dir", root / "exp", *SMALL], timeout=1200, cwd=REPO)
    return root, r, time.time() - t0


def test_mini_runs_every_stage_and_ends_with_the_summary_and_the_plot(mini):
    root, r, seconds = mini
    assert r.returncode == 0, explain(r)
    data, run_dir = root / "data", root / "exp" / "nest_tiny"
    at = r"\((?:run|librilight_stages|stages)\.sh:\d+:main\)"  # log(): the recipe, or the stage file it sources
    for n in range(14):
        assert re.search(rf"{at} Stage {n}:", r.stderr), f"stage {n} did not run\n{explain(r)}"
        if n != 4:  # stage 4 (Shar) is off in egs/mini
            assert re.search(rf"{at} Stage {n}: [^\n]*\(not done yet\)", r.stderr), f"stage {n}"
            assert re.search(rf"{at} Stage {n}: done", r.stderr), f"stage {n}\n{explain(r)}"
    # stage 0: the generated corpus is in LibriLight's layout (subset/speaker/book/file), with LibriLight's JSON keys
    flacs = sorted(glob.glob(str(data / "corpus" / "*" / "*" / "*" / "*.flac")))
    assert len(flacs) == N_FILES
    assert {os.path.relpath(f, data / "corpus").split(os.sep)[0] for f in flacs} == {"small"}
    corpus_speakers = {os.path.basename(os.path.dirname(os.path.dirname(f))) for f in flacs}
    assert len(corpus_speakers) == SPEAKERS
    assert len({os.path.dirname(f) for f in flacs}) == SPEAKERS * BOOKS
    for flac in flacs:
        meta = json.load(open(flac[: -len(".flac")] + ".json"))
        assert set(meta) == {"speaker", "book_meta", "snr", "voice_activity"}
        assert meta["speaker"] in flac.split(os.sep) and meta["voice_activity"]
        assert {"title", "genre", "meta_genre", "authors"} <= set(meta["book_meta"])
    # ... the labelled set: other speakers, every one in every split, sentences apart, alignments
    labelled = {split: [json.loads(line) for line in gz_text(data / "labelled" / f"{split}.jsonl.gz").splitlines()]
                for split in ("train", "dev", "test")}
    assert sum(len(cuts) for cuts in labelled.values()) == EVAL_SPEAKERS * EVAL_UTTERANCES
    sups = {split: [c["supervisions"][0] for c in cuts] for split, cuts in labelled.items()}
    eval_speakers = {split: {s["speaker"] for s in ss} for split, ss in sups.items()}
    assert eval_speakers["train"] == eval_speakers["dev"] == eval_speakers["test"]
    assert len(eval_speakers["train"]) == EVAL_SPEAKERS and not eval_speakers["train"] & corpus_speakers
    texts = {split: {s["text"] for s in ss} for split, ss in sups.items()}
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"] and not texts["dev"] & texts["test"]
    assert all(s["text"] and s["alignment"]["phone"] and s["alignment"]["word"] for ss in sups.values() for s in ss)
    assert len(glob.glob(str(data / "labelled" / "audio" / "*" / "*.flac"))) == EVAL_SPEAKERS * EVAL_UTTERANCES
    assert len(glob.glob(str(data / "musan" / "*" / "*" / "*.wav"))) == 6
    # stage 1: every file prepared, none rejected
    recs = gz_text(data / "manifests" / "librilight_recordings_small.jsonl.gz").splitlines()
    assert len(recs) == N_FILES and (data / "manifests" / "rejects_small.tsv").read_text().count("\n") == 1
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
    # stage 8: the evaluation of the exported model against its random-init twins and log-mel features
    rows = json.load(open(run_dir / "eval" / "results.json"))
    assert rows and all(set(row) == {"task", "model", "seed", "metric", "value", "higher_is_better"} for row in rows)
    assert all(isinstance(row["value"], float) and row["value"] == row["value"] for row in rows)  # a number, not NaN
    by = {}
    for row in rows:
        by.setdefault((row["task"], row["metric"], row["model"]), []).append(row)
    for task, metric, higher in (("phone", "accuracy", True), ("speaker", "accuracy", True), ("asr", "cer", False),
                                 ("asr", "wer", False)):
        assert len(by[(task, metric, "pretrained")]) == 1 and len(by[(task, metric, "fbank")]) == 1, (task, metric)
        assert sorted(row["seed"] for row in by[(task, metric, "random_init")]) == list(range(RANDOM_SEEDS))
        for model in ("pretrained", "random_init", "fbank"):
            assert all(row["higher_is_better"] is higher for row in by[(task, metric, model)])
    for metric in ("cer", "wer"):
        assert ("finetune", metric, "pretrained") in by and ("finetune", metric, "random_init") in by
        assert ("finetune", metric, "fbank") not in by
    accuracies = [row["value"] for row in rows if row["metric"] == "accuracy"]
    assert all(0.0 <= v <= 1.0 for v in accuracies)
    assert all(row["value"] >= 0.0 for row in rows if row["metric"] in ("cer", "wer"))
    assert {row["task"] for row in rows} >= {"phone_layer0", "phone_layer1", "phone_layer2", "phone_majority"}
    assert (run_dir / "eval" / "layer_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ... and the table printed at the end, with the pretrained model's phone accuracy from results.json
    phone = by[("phone", "accuracy", "pretrained")][0]["value"]
    assert re.search(rf"^phone\s+accuracy \(higher is better\)\s+{phone:.3f}\s+\d\.\d+ ± \d\.\d+ \(n={RANDOM_SEEDS}\)",
                     r.stdout, re.M), r.stdout[-3000:]
    assert str(run_dir / "eval" / "results.json") in r.stdout
    print(f"egs/mini took {seconds:.0f} s")


def asr_manifest(data, name):
    return [json.loads(line) for line in (data / "asr" / f"{name}.json").read_text().splitlines()]


def test_mini_fine_tunes_decodes_and_tabulates_the_grid(mini):
    root, r, _ = mini
    assert r.returncode == 0, explain(r)
    data, ft = root / "data", root / "exp" / "nest_tiny" / "finetune"
    # stage 9: the sets, their speakers unseen by pretraining and by the labelled set of stage 0
    corpus_speakers = {os.path.basename(p) for p in glob.glob(str(data / "corpus" / "small" / "*"))}
    labelled_speakers = {os.path.basename(p) for p in glob.glob(str(data / "labelled" / "audio" / "*"))}
    sets = {n: asr_manifest(data, n) for n in ("train_10min", "train_1h", "dev", "test")}
    speakers = {n: {row["speaker"] for row in rows} for n, rows in sets.items()}
    assert len(speakers["train_1h"]) == 2 and len(speakers["dev"]) == 1 and len(speakers["test"]) == 1
    assert not (speakers["train_1h"] | speakers["dev"] | speakers["test"]) & (corpus_speakers | labelled_speakers)
    assert all(row in sets["train_1h"] for row in sets["train_10min"])
    assert not {row["text"] for row in sets["test"]} & set((data / "asr" / "lm.txt").read_text().splitlines())
    # stages 10-12: one tokenizer and LM; each run of the grid fine-tuned (the pretrained ones from the export)
    # and decoded with the icefall-style files
    assert (ft / "tokenizer" / "tokenizer.model").is_file() and (ft / "lm.arpa").read_text().startswith("\n\\data\\")
    runs = [f"{b}_{i}_seed{s}" for b in ("10min", "1h") for i in ("pretrained", "random_init") for s in ASR_SEEDS]
    for run_name in runs:
        assert (ft / run_name / "step-4.ckpt").is_file(), run_name
        log_text = (ft / run_name / "finetune.log").read_text()
        if "pretrained" in run_name:
            assert re.search(r"initialised \d+ of \d+ encoder tensors .*export/model\.nemo", log_text), log_text
        else:
            assert "initialised at random" in log_text
        for method in ("greedy", "lm"):
            for test_set in ("dev", "test"):
                assert (ft / run_name / "decode" / f"errs-{test_set}-{method}.txt").is_file(), (run_name, method)
    # stage 13: results.json as the issue asks, the table printed with one line per budget x init x decoding
    rows = json.loads((ft / "results.json").read_text())
    assert len(rows) == len(runs) * 2
    assert all(set(row) == {"budget", "init", "seed", "decoding", "wer", "cer"} for row in rows)
    assert {(row["budget"], row["init"], row["seed"], row["decoding"]) for row in rows} == {
        (b, i, s, d) for b in ("10min", "1h") for i in ("pretrained", "random_init") for s in ASR_SEEDS
        for d in ("greedy", "lm")}
    for row in rows:
        summary = (ft / f"{row['budget']}_{row['init']}_seed{row['seed']}" / "decode" /
                   f"wer-summary-test-{row['decoding']}.txt").read_text().splitlines()[1].split("\t")
        assert row["wer"] == pytest.approx(float(summary[1]) / 100) and row["cer"] == pytest.approx(
            float(summary[2]) / 100)
    table = (ft / "table.txt").read_text()
    assert table in r.stdout
    assert len(re.findall(r"^(10min|1h)\s+(pretrained|random_init)\s+(greedy|lm)\s+\d\.\d{3} ± \d\.\d{3}", table,
                          re.M)) == 8


def test_a_grid_grown_by_a_seed_trains_and_decodes_only_that_seed(mini, tmp_path):
    root, first, _ = mini
    assert first.returncode == 0, explain(first)
    import shutil

    exp = tmp_path / "exp"
    shutil.copytree(root / "exp", exp)
    ft = exp / "nest_tiny" / "finetune"
    before = {p: p.stat().st_mtime_ns for p in ft.rglob("*.ckpt")}
    opts = [*SMALL[:SMALL.index("--ft-seeds")], "--ft-seeds", "1 2 3", *SMALL[SMALL.index("--ft-seeds") + 2:]]
    r = run([MINI, "--data-dir", root / "data", "--exp-dir", exp, "--stage", 11, *opts], timeout=900, cwd=REPO)
    assert r.returncode == 0, explain(r)
    assert [p for p, t in before.items() if p.stat().st_mtime_ns != t] == []  # the old runs: untouched
    trained = re.findall(r"Stage 11: fine-tuning (\S+) ", r.stderr)
    assert sorted(trained) == sorted(f"{b}_{i}_seed3" for b in ("10min", "1h") for i in ("pretrained", "random_init"))
    assert len(re.findall(r"Stage 11: \S+ up to date", r.stderr)) == 8
    rows = json.loads((ft / "results.json").read_text())
    assert len(rows) == 2 * 2 * 3 * 2 and {row["seed"] for row in rows} == {1, 2, 3}


def test_rerun_skips_the_finished_stages(mini):
    root, first, _ = mini
    assert first.returncode == 0, explain(first)
    # every file but data/.lock, where each run writes its name while it holds the data folder
    files = [p for p in root.rglob("*") if p.is_file() and p.name != ".lock"]
    before = {p: p.stat().st_mtime_ns for p in files}
    r = run([MINI, "--data-dir", root / "data", "--exp-dir", root / "exp", *SMALL], cwd=root)  # from another folder
    assert r.returncode == 0, explain(r)
    for n in (0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13):
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
    assert 3 <= done_before < N_FILES
    assert not (tmp_path / "data" / "manifests" / "librilight_cuts_small.jsonl.gz").exists()
    assert not (tmp_path / "data" / ".done" / "stage1.done").exists()

    r = run(cmd)
    assert r.returncode == 0, explain(r)
    assert "an earlier run did not finish; continuing it" in r.stderr
    reused = int(re.search(rf"(\d+) of {N_FILES} chunks reused", r.stderr).group(1))
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
    cmd = [MINI, "--data-dir", root / "data", "--exp-dir", tmp_path / "exp", "--stage", "6", "--stop-stage", "6",
           *SMALL]
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
