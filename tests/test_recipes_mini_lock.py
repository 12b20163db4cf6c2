"""egs/mini's fine-tuning stages are locked like its data stages: stage 9 writes the data folder (data/.lock, as
stages 0-5), stages 10-13 write the run's finetune folder and markers (exp/<name>/finetune/.lock). While another
process holds either lock, run.sh is refused in one line that names the folder and the holder, and writes nothing.
The holder here is a real flock(2) on the same file, as recipe_lock takes it in another run.sh."""

import fcntl
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(REPO, "egs", "mini", "run.sh")
ENV = dict(os.environ, PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ.get("PATH", ""))


def _refused_while_held(tmp_path, folder, args, other):
    folder.mkdir(parents=True)
    with open(folder / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("another run.sh pid 4242 on somewhere\n")
        held.flush()
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        r = subprocess.run(["bash", MINI, "--data-dir", str(tmp_path / "data"), "--exp-dir", str(tmp_path / "exp"),
                            *args], capture_output=True, text=True, timeout=120, env=ENV)
        after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert r.returncode == 1 and r.stdout == "", r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert (f"ERROR: {folder} is in use by another run (another run.sh pid 4242 on somewhere); wait for it to end "
            f"or give another {other}") in line, line
    assert after == before  # nothing written, no marker removed


def test_stage_9_is_refused_while_another_run_prepares_the_data_folder(tmp_path):
    _refused_while_held(tmp_path, tmp_path / "data", ["--stage", "9", "--stop-stage", "9"], "--data-dir")


def test_stages_10_to_13_are_refused_while_another_run_holds_the_finetune_folder(tmp_path):
    _refused_while_held(tmp_path, tmp_path / "exp" / "nest_tiny" / "finetune", ["--stage", "10"], "--exp-name")
