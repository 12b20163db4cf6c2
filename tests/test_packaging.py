"""The package as a user installs it: a wheel built from the checkout carries the model configs, and `nest-ssl train`
finds them from any folder without --config-path (nothing is read from the checkout)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.name for p in (REPO / "nest_ssl" / "conf").glob("*.yaml"))


def test_the_wheel_ships_the_configs_and_train_finds_them_outside_the_checkout(tmp_path):
    assert "nest_fast-conformer.yaml" in CONFIGS and "nest_tiny.yaml" in CONFIGS
    # built from a copy: setuptools writes build/ and *.egg-info next to setup.py
    src = tmp_path / "src"
    shutil.copytree(REPO / "nest_ssl", src / "nest_ssl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.py", src / "setup.py")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("nest_ssl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.split("/")[-1] for n in names if n.startswith("nest_ssl/conf/")) == CONFIGS

    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("NEST_SSL_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", "import sys, nest_ssl.cli; print(nest_ssl.cli.__file__, file=sys.stderr);"
                        "sys.exit(nest_ssl.cli.main())", "train", "--cfg", "job", "--config-name", "nest_tiny",
                        "trainer.max_steps=7"], capture_output=True, text=True, timeout=120, cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(site) in r.stderr  # the installed copy ran, not the checkout
    assert "max_steps: 7" in r.stdout and "n_layers: 2" in r.stdout, r.stdout[-2000:]
