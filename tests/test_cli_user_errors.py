"""Every `nest-ssl` sub-command turns a user's mistake into one line `nest-ssl: error: ...` and exit code 2, through
nest_ssl/cli/guard.py: real subprocesses on real bad inputs (a missing file, a folder in place of a file, an
unreadable file, an empty manifest). None may leave a traceback or exit 1, and none may write its output."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
ENV.pop("NEST_SSL_DEBUG", None)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "folder").mkdir()
    (tmp_path / "locked.json").write_text('{"audio_filepath": "x.wav", "duration": 1.0}\n')
    (tmp_path / "locked.json").chmod(0)
    return tmp_path


# command (with {d} for the inputs' folder) -> words the error line must hold
MISTAKES = {
    "manifest: missing file": ("manifest from-nemo {d}/nope.json {d}/out.jsonl.gz", ["nope.json"]),
    "manifest: folder": ("manifest from-nemo {d}/folder {d}/out.jsonl.gz", ["folder"]),
    "manifest: empty": ("manifest from-nemo {d}/empty.json {d}/out.jsonl.gz", ["empty.json", "empty"]),
    "cuts windows: missing file": ("cuts windows {d}/nope.jsonl.gz {d}/out.jsonl.gz", ["nope.jsonl.gz", "not found"]),
    "cuts windows: bad durations": ("cuts windows {d}/empty.json {d}/out.jsonl.gz --min-duration 5 --max-duration 2",
                                    ["--min-duration", "5.0", "2.0"]),
    "cuts estimate-bins: folder": ("cuts estimate-bins {d}/folder", ["folder", "is a directory"]),
    "cuts estimate-bins: empty": ("cuts estimate-bins {d}/empty.json", ["empty.json", "empty"]),
    "shar export: empty": ("shar export {d}/empty.json {d}/out", ["empty.json", "empty"]),
    "prepare librilight: missing corpus": ("prepare librilight {d}/folder {d}/out", ["folder/small", "not found"]),
    "prepare librilight: bad subset": ("prepare librilight {d}/folder {d}/out --subsets tiny", ["--subsets", "tiny"]),
    "prepare noise: missing source": ("prepare noise {d}/nope {d}/out", ["nope", "not found"]),
    "extract: missing checkpoint": ("extract {d}/nope.ckpt {d}/empty.json {d}/out", ["nope.ckpt", "does not exist"]),
    "plot: folder without metrics": ("plot {d}/folder", ["folder", "metrics.jsonl"]),
    "export: folder as checkpoint": ("export {d}/folder {d}/out.nemo", ["folder", "is a directory"]),
    "import-nemo: missing archive": ("import-nemo {d}/nope.nemo {d}/out.ckpt", ["nope.nemo", "does not exist"]),
    "evaluate: missing model": ("evaluate --model {d}/nope.nemo --train-cuts {d}/empty.json --dev-cuts {d}/empty.json "
                                "--test-cuts {d}/empty.json --out-dir {d}/out", ["nope.nemo", "does not exist"]),
    "train: empty manifest": ("train --config-name nest_tiny model.train_ds.manifest_filepath={d}/empty.json "
                              "model.validation_ds.manifest_filepath={d}/empty.json exp_manager.exp_dir={d}/out",
                              ["empty.json", "empty"]),
}


def _run(cmd, cwd, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "nest_ssl.cli", *cmd], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=240)


def _assert_one_line_exit_2(p, needles):
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("nest-ssl: error: "), p.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_command_reports_a_mistake_in_one_line_and_exit_2(mistake, inputs):
    cmd, needles = MISTAKES[mistake]
    before = sorted(inputs.rglob("*"))
    _assert_one_line_exit_2(_run(cmd.format(d=inputs).split(), inputs), needles)
    assert sorted(inputs.rglob("*")) == before  # no output, no partial file, no folder


def test_an_unreadable_manifest_is_reported_as_permission_denied(inputs):
    prefix = ()
    if IS_ROOT:  # root reads a mode-000 file: take the permission override away from the process
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
    for cmd in (f"manifest from-nemo {inputs}/locked.json {inputs}/out.jsonl.gz",
                f"cuts estimate-bins {inputs}/locked.json"):
        _assert_one_line_exit_2(_run(cmd.split(), inputs, prefix), ["locked.json", "permission denied"])
    assert not (inputs / "out.jsonl.gz").exists()


def test_extract_with_a_cut_whose_audio_is_missing(tmp_path):
    """A real (untrained) tiny checkpoint and a manifest naming an audio file that is not there: lhotse's
    multi-backend loading error becomes one line naming the manifest, the cut and the file; no output folder."""
    from omegaconf import OmegaConf

    from nest_ssl.config import load_config
    from nest_ssl.models import NESTModel
    from nest_ssl.checkpoint import save_checkpoint

    cfg = load_config(config_name="nest_tiny")
    model = NESTModel.from_config(cfg.model)
    ckpt = save_checkpoint({"state_dict": model.state_dict(),
                            "nest_ssl": {"config": {"model": OmegaConf.to_container(cfg.model, resolve=False)}}},
                           tmp_path / "tiny.ckpt")
    (tmp_path / "m.json").write_text('{"audio_filepath": "gone.wav", "duration": 1.0}\n')
    p = _run(["extract", str(ckpt), str(tmp_path / "m.json"), str(tmp_path / "out")], tmp_path)
    _assert_one_line_exit_2(p, ["m.json", "gone.wav", "does not exist"])
    assert not (tmp_path / "out").exists()
