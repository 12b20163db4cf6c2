"""local/parse_options.sh, log() and the stage guards of local/common.sh, driven by a small recipe run in bash."""

import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""#!/usr/bin/env bash
set -euo pipefail
. "REPO/local/common.sh"
stage=0
stop_stage=3
force=false
foo_bar=1
flag=false
name=x
help_message="usage: demo.sh [--foo-bar N] [--flag true|false] [--name S]"
. "REPO/local/parse_options.sh"
echo "foo_bar=$foo_bar flag=$flag name=$name rest=$* parsed=[$parsed_options]"
done_dir=$PWD/done
if stage_begin 1 "one" opt:name="$name" in:in.txt out:out1.txt; then
  { cat in.txt; echo "$name"; } > out1.txt
  echo RAN1
  stage_end 1
fi
if stage_begin 2 "two" in:out1.txt out:out2.txt; then
  cp out1.txt out2.txt
  echo RAN2
  [ -z "${FAIL2:-}" ] || exit 3
  stage_end 2
fi
if stage_begin 3 "three" in:missing.txt out:out3.txt; then
  echo RAN3
  stage_end 3
fi
"""


@pytest.fixture
def demo(tmp_path):
    script = tmp_path / "demo.sh"
    script.write_text(SCRIPT.replace("REPO", REPO))
    script.chmod(0o755)
    (tmp_path / "in.txt").write_text("input\n")

    def run(*args, env=None):
        return subprocess.run(["bash", str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, **(env or {})))

    run.dir = tmp_path
    return run


def ran(r):
    return [line for line in r.stdout.splitlines() if line.startswith("RAN")]


def test_options_follow_kaldi(demo, tmp_path):
    r = demo("--foo-bar", "5", "--flag", "true", "--name", "y z", "--stop-stage", "0", "pos1", "pos2")
    assert r.returncode == 0, r.stderr
    assert "foo_bar=5 flag=true name=y z rest=pos1 pos2" in r.stdout
    assert re.search(r"parsed=\[ foo_bar flag name stop_stage \]", r.stdout)

    # a mistake on the command line: exit 2 (as nest-ssl's usage errors), nothing run
    r = demo("--nope", "1")
    assert r.returncode == 2 and "invalid option --nope" in r.stderr

    r = demo("--flag", "yes")
    assert r.returncode == 2 and "expects true or false" in r.stderr

    r = demo("--foo-bar=3")
    assert r.returncode == 2 and "--name value" in r.stderr

    r = demo("--foo-bar")
    assert r.returncode == 2 and "needs a value" in r.stderr

    r = demo("--help")
    assert r.returncode == 0 and "usage: demo.sh" in r.stderr and "RAN" not in r.stdout

    conf = tmp_path / "my.conf"
    conf.write_text("name=from_config\nfoo_bar=9\n")
    r = demo("--config", str(conf), "--foo-bar", "4", "--stop-stage", "0")
    assert r.returncode == 0 and "foo_bar=4 flag=false name=from_config" in r.stdout


def test_stage_guards_skip_rerun_and_force(demo):
    d = demo.dir
    first = demo("--stop-stage", "2")
    assert first.returncode == 0, first.stderr
    assert ran(first) == ["RAN1", "RAN2"]
    # log(): "YYYY-mm-dd HH:MM:SS (file:line:function) message"
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(demo\.sh:\d+:main\) Stage 1: one \(not done yet\)$",
                     first.stderr, re.M), first.stderr
    marker = (d / "done" / "stage1.done").read_text()
    assert '"name": "x"' in marker and "in.txt" in marker and "out1.txt" in marker

    again = demo("--stop-stage", "2")
    assert ran(again) == []
    assert "Stage 1: one: skipped, up to date" in again.stderr and "Stage 2: two: skipped" in again.stderr

    # an option that changes the outputs: stage 1 reruns, and stage 2 because its input changed
    r = demo("--stop-stage", "2", "--name", "other")
    assert ran(r) == ["RAN1", "RAN2"] and "option name changed: 'x' -> 'other'" in r.stderr
    # an input changed
    (d / "in.txt").write_text("new input\n")
    r = demo("--stop-stage", "2", "--name", "other")
    assert ran(r) == ["RAN1", "RAN2"] and "input in.txt changed" in r.stderr
    # an output deleted: only that stage reruns
    (d / "out2.txt").unlink()
    r = demo("--stop-stage", "2", "--name", "other")
    assert ran(r) == ["RAN2"] and "output out2.txt is missing" in r.stderr
    # an output edited by hand: its stage reruns and writes what it wrote before, so the stage reading it, whose
    # input is fingerprinted by content, is still up to date
    (d / "out1.txt").write_text("edited\n")
    r = demo("--stop-stage", "2", "--name", "other")
    assert ran(r) == ["RAN1"] and "output out1.txt changed" in r.stderr

    # --stage N forces N; the next stage reruns only if N changed what it reads (here: same content, so no)
    r = demo("--stage", "1", "--stop-stage", "2", "--name", "other")
    assert ran(r) == ["RAN1"] and "forced by --stage 1" in r.stderr
    r = demo("--stage", "2", "--stop-stage", "2", "--name", "other")
    assert ran(r) == ["RAN2"]
    # --force true: everything in range
    r = demo("--stop-stage", "2", "--name", "other", "--force", "true")
    assert ran(r) == ["RAN1", "RAN2"]
    # --stage 0 given explicitly forces stage 0 only, which this recipe does not have
    r = demo("--stage", "0", "--stop-stage", "2", "--name", "other")
    assert ran(r) == []


def test_a_killed_stage_is_not_done_and_a_missing_input_stops_the_run(demo):
    r = demo("--stop-stage", "2", env={"FAIL2": "1"})
    assert r.returncode == 3 and ran(r) == ["RAN1", "RAN2"]
    assert not (demo.dir / "done" / "stage2.done").exists()
    r = demo("--stop-stage", "2")
    assert r.returncode == 0 and ran(r) == ["RAN2"]
    assert "an earlier run did not finish" in r.stderr
    r = demo("--stop-stage", "3")
    assert r.returncode == 1 and ran(r) == []
    assert "Stage 3: three: input missing.txt does not exist" in r.stderr


NUMBERS = r"""#!/usr/bin/env bash
set -euo pipefail
. "REPO/local/common.sh"
stage=0
nj=2
max_duration=20.0
help_message="usage: numbers.sh [--stage N] [--nj N] [--max-duration SEC]"
. "REPO/local/parse_options.sh"
check_int 0 stage
check_int 1 nj
check_float 0 max_duration
recipe_lock "$PWD/data"
[ -z "${UNLOCK:-}" ] || recipe_unlock
echo "stage=$stage nj=$nj max_duration=$max_duration"
sleep "${HOLD:-0}"
"""


@pytest.fixture
def numbers(tmp_path):
    script = tmp_path / "numbers.sh"
    script.write_text(NUMBERS.replace("REPO", REPO))
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("option,value,expected", [
    ("--stage", "x", "an integer >= 0"), ("--stage", "-1", "an integer >= 0"), ("--stage", "1.5", "an integer >= 0"),
    ("--nj", "two", "an integer >= 1"), ("--nj", "0", "an integer >= 1"), ("--nj", "", "an integer >= 1"),
    ("--max-duration", "abc", "a number >= 0"), ("--max-duration", "-3", "a number >= 0"),
    ("--max-duration", "1.2.3", "a number >= 0"),
])
def test_a_numeric_option_that_is_not_a_number_is_one_message_and_exit_2(numbers, tmp_path, option, value, expected):
    r = subprocess.run(["bash", str(numbers), option, value], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"{numbers}: option {option} expects {expected}, got '{value}'"]
    assert r.stdout == "" and not (tmp_path / "data").exists()  # stopped before it created anything


def test_numbers_in_every_form_are_accepted(numbers, tmp_path):
    for args, out in ((["--stage", "3", "--nj", "16", "--max-duration", "7"], "stage=3 nj=16 max_duration=7"),
                      (["--max-duration", ".5"], "max_duration=.5"), (["--max-duration", "2.5e1"], "max_duration=2.5e1")):
        r = subprocess.run(["bash", str(numbers), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and out in r.stdout, r.stderr


def test_a_second_run_on_the_same_data_folder_is_refused_while_the_first_holds_it(numbers, tmp_path):
    first = subprocess.Popen(["bash", str(numbers)], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, HOLD="30"), start_new_session=True)
    try:
        assert "stage=0" in first.stdout.readline()  # it holds the lock from here on
        second = subprocess.run(["bash", str(numbers)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and second.stdout == "", second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert f"ERROR: {tmp_path / 'data'} is in use by another run ({numbers} pid {first.pid} on" in line, line
        assert "give another --data-dir" in line
    finally:
        os.killpg(first.pid, 9)
        first.wait()
        first.stdout.close()
    # the lock went with the run that held it, however it ended
    again = subprocess.run(["bash", str(numbers)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr


def _hold(numbers, tmp_path, **env):
    first = subprocess.Popen(["bash", str(numbers)], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, HOLD="30", **env), start_new_session=True)
    assert "stage=0" in first.stdout.readline()  # past recipe_lock (and recipe_unlock, if asked)
    return first


def _stop(p):
    os.killpg(p.pid, 9)
    p.wait()
    p.stdout.close()


def test_the_lock_file_fallback_refuses_a_second_run_and_is_taken_over_after_a_kill(numbers, tmp_path):
    """NEST_SSL_LOCK_MODE=file (the fallback where flock(1) is missing or refused): data/.lock.excl names the
    recipe's shell; a second run is refused naming it; after SIGKILL (no exit trap) the file stays, and the next
    run takes it over because that PID is gone, then removes it at its end."""
    env = dict(os.environ, NEST_SSL_LOCK_MODE="file")
    lock = tmp_path / "data" / ".lock.excl"
    first = _hold(numbers, tmp_path, NEST_SSL_LOCK_MODE="file")
    try:
        assert lock.read_text().startswith(f"host={os.uname().nodename} pid={first.pid} ")
        second = subprocess.run(["bash", str(numbers)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                env=env)
        assert second.returncode == 1 and second.stdout == "", second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert f"ERROR: {tmp_path / 'data'} is in use by another run (PID {first.pid} on " in line, line
        assert f"holds {lock})" in line and "give another --data-dir" in line
    finally:
        _stop(first)
    assert lock.exists()
    again = subprocess.run(["bash", str(numbers)], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 0, again.stderr
    assert f"took over: PID {first.pid} on" in again.stderr and "(it is not running)" in again.stderr
    assert not lock.exists()  # removed when the run ended


@pytest.mark.parametrize("mode", ["auto", "file"])
def test_recipe_unlock_lets_the_next_run_in(numbers, tmp_path, mode):
    """What local/stages.sh does before training: once unlocked, another run may prepare or train meanwhile."""
    first = _hold(numbers, tmp_path, UNLOCK="1", NEST_SSL_LOCK_MODE=mode)
    try:
        second = subprocess.run(["bash", str(numbers)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, NEST_SSL_LOCK_MODE=mode))
        assert second.returncode == 0, second.stderr
        assert first.poll() is None
    finally:
        _stop(first)


def test_a_bad_lock_mode_is_one_message(numbers, tmp_path):
    r = subprocess.run(["bash", str(numbers)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, NEST_SSL_LOCK_MODE="nfs"))
    assert r.returncode == 1 and "NEST_SSL_LOCK_MODE=nfs: expected auto, flock or file" in r.stderr, r.stderr
