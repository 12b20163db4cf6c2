"""The package as a user installs it: a wheel built from the checkout carries the model configs and declares every
dependency the code imports (as ranges, which the pins of requirements.txt satisfy); pip installs it beside an
existing torch without replacing it, and into a fresh venv with everything it needs; `nest-ssl train` then finds
the configs from any folder without --config-path (nothing is read from the checkout)."""

import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.name for p in (REPO / "nest_ssl" / "conf").glob("*.yaml"))
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
DEPENDENCIES = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PROJECT["dependencies"]}
EXTRAS = {extra: {canonicalize_name(Requirement(r).name) for r in reqs}
          for extra, reqs in PROJECT["optional-dependencies"].items()}
# imports whose package is not the one the module name says
IMPORT_NEEDS = {"torch.utils.tensorboard": "tensorboard"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # built from a copy: setuptools writes build/ and *.egg-info next to pyproject.toml
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO / "nest_ssl", src / "nest_ssl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                            "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300, cwd=tmp)
    assert build.returncode == 0, build.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("nest_ssl-*.whl")
    return whl


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NEST_SSL_DEBUG", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _cfg_job(python: Path | str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """`nest-ssl train --cfg job` through the installed package, printing which copy of nest_ssl ran."""
    return subprocess.run([str(python), "-c", "import sys, nest_ssl.cli; print(nest_ssl.cli.__file__, file=sys.stderr);"
                           "sys.exit(nest_ssl.cli.main())", "train", "--cfg", "job", "--config-name", "nest_tiny",
                           "trainer.max_steps=7"], capture_output=True, text=True, timeout=180, cwd=cwd, env=env)


def test_the_wheel_ships_the_configs_and_train_finds_them_outside_the_checkout(wheel, tmp_path):
    assert "nest_fast-conformer.yaml" in CONFIGS and "nest_tiny.yaml" in CONFIGS
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.split("/")[-1] for n in names if n.startswith("nest_ssl/conf/")) == CONFIGS
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "nest-ssl = nest_ssl.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _cfg_job(sys.executable, elsewhere, _clean_env(PYTHONPATH=str(site)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(site) in r.stderr  # the installed copy ran, not the checkout
    assert "max_steps: 7" in r.stdout and "n_layers: 2" in r.stdout, r.stdout[-2000:]


def _third_party_imports() -> dict[str, list[str]]:
    """Top-level module (or IMPORT_NEEDS key) -> where nest_ssl imports it, including imports inside functions."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "nest_ssl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                key = name if name in IMPORT_NEEDS else name.split(".")[0]
                if key not in sys.stdlib_module_names and key != "nest_ssl":
                    found.setdefault(key, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_every_package_the_code_imports_is_declared():
    """A dependency the code imports but pyproject.toml does not declare (or declares only in an extra the code
    does not treat as optional) would break `pip install nest-ssl` on a machine without it."""
    to_dist = importlib.metadata.packages_distributions()
    optional = {canonicalize_name(n) for names in EXTRAS.values() for n in names}
    imports = _third_party_imports()
    assert {"torch", "lhotse", "numpy", "soundfile", "omegaconf", "yaml", "matplotlib"} <= set(imports), imports
    undeclared = {}
    for module, where in imports.items():
        dists = [IMPORT_NEEDS[module]] if module in IMPORT_NEEDS else to_dist.get(module, [module])
        names = {canonicalize_name(d) for d in dists}
        if not names & (set(DEPENDENCIES) | optional):
            undeclared[module] = (sorted(names), where[:3])
    assert not undeclared, f"imported but not in pyproject.toml's dependencies or extras: {undeclared}"
    # the optional ones are imported only inside functions that say which extra to install
    assert "matplotlib" in EXTRAS["plot"] and "matplotlib" not in DEPENDENCIES
    assert "lilcom" in EXTRAS["lilcom"] and "lilcom" not in DEPENDENCIES
    assert not {"pytest", "matplotlib"} & set(DEPENDENCIES)


def test_the_pins_satisfy_the_ranges():
    """requirements.txt (what `make install` installs) pins a version inside every declared range, and the
    environment running the tests has such versions: the ranges are what the tested pins satisfy."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.txt pins exact versions: {line}"
            pins[canonicalize_name(req.name)] = spec.version
    for name, req in DEPENDENCIES.items():
        assert name in pins, f"{name} is a dependency in pyproject.toml but not pinned in requirements.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (str(req), pins[name])
        installed = importlib.metadata.version(name)
        assert req.specifier.contains(installed, prereleases=True), (str(req), installed)
    for name in set().union(*EXTRAS.values()) - {"lilcom"}:  # lilcom: optional, not part of make install
        assert name in pins, f"extra {name} is not pinned in requirements.txt"


def _purelib(python: Path | str) -> str:
    return subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_the_wheel_installs_beside_an_existing_torch_without_replacing_it(wheel, tmp_path):
    """A user's environment that already has torch and the rest (here: the test environment, seen through a .pth
    file from a new venv): pip installs nest-ssl and nothing else, and leaves that environment untouched."""
    shared = sysconfig.get_paths()["purelib"]
    before = sorted(os.listdir(shared))
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)  # pip itself comes from the shared environment too
    python = env_dir / "bin" / "python"
    (Path(_purelib(python)) / "existing.pth").write_text(shared + "\n")
    report = tmp_path / "report.json"
    install = subprocess.run([str(python), "-m", "pip", "install", "--report", str(report), str(wheel)],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_clean_env())
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    installed = [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.loads(report.read_text())["install"]]
    assert installed == [("nest-ssl", PROJECT["version"])], installed
    assert sorted(os.listdir(shared)) == before

    r = subprocess.run([str(python), "-c", "import torch, lhotse; print(torch.__version__, torch.__file__)"],
                       capture_output=True, text=True, timeout=120, env=_clean_env())
    assert r.returncode == 0, r.stderr[-2000:]
    version, where = r.stdout.split()
    import torch

    assert version == torch.__version__ and Path(where).resolve().is_relative_to(Path(shared).resolve()), r.stdout

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _cfg_job(env_dir / "bin" / "python", elsewhere, _clean_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(env_dir) in r.stderr and "max_steps: 7" in r.stdout, r.stderr[-2000:]
    r = subprocess.run([str(env_dir / "bin" / "nest-ssl"), "--version"], capture_output=True, text=True, timeout=120,
                       cwd=elsewhere, env=_clean_env())
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]


def _make_dummy_data(cwd: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "recipes" / "nest" / "make_dummy_data.py"), "--num-train", "8",
                    "--num-val", "4", "--min-seconds", "1.5", "--max-seconds", "2"], cwd=cwd, check=True,
                   capture_output=True, timeout=120, env=_clean_env())


def _pinned(name: str) -> str:
    """requirements.txt's line for `name` (e.g. "torch==2.9.1")."""
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.strip()
    raise AssertionError(f"{name} is not pinned in requirements.txt")


@pytest.mark.slow
def test_a_fresh_venv_gets_every_dependency_and_trains(wheel, tmp_path):
    """`pip install nest_ssl-*.whl` into an empty venv brings every dependency; the installed `nest-ssl` trains.

    The wheel's ranges are what is tested; torch alone is held at requirements.txt's pin (the build `make install`
    already fetched, so CI does not download a second multi-GB CUDA torch). Set NEST_SSL_FRESH_TORCH to another
    requirement (e.g. `torch==2.13.0+cpu`) to try another build, or to `any` to let pip choose within the range."""
    env_dir = tmp_path / "fresh"
    try:
        venv.create(env_dir, with_pip=True)
        python = env_dir / "bin" / "python"
        cmd = [str(python), "-m", "pip", "install", "-q", str(wheel)]
        torch_req = os.environ.get("NEST_SSL_FRESH_TORCH") or _pinned("torch")
        if torch_req != "any":
            (tmp_path / "torch.txt").write_text(torch_req + "\n")
            cmd += ["-c", str(tmp_path / "torch.txt")]
        install = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=tmp_path, env=_clean_env())
        assert install.returncode == 0, install.stderr[-3000:]
        listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True,
                                text=True, check=True, env=_clean_env()).stdout
        have = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed)}
        for name, req in DEPENDENCIES.items():
            assert name in have and req.specifier.contains(have[name], prereleases=True), (str(req), have.get(name))
        assert "matplotlib" not in have and "pytest" not in have  # extras only

        # every module imports (lhotse's own undeclared imports included), and the lazily imported packages exist
        r = subprocess.run([str(python), "-c", "import importlib, pkgutil, nest_ssl\n"
                            "for m in pkgutil.walk_packages(nest_ssl.__path__, 'nest_ssl.'):\n"
                            "    m.name.endswith('__main__') or importlib.import_module(m.name)\n"
                            "import torch.utils.tensorboard, tqdm, kaldialign, espeakng_loader, soundfile\n"
                            "print(nest_ssl.__file__)"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_clean_env())
        assert r.returncode == 0 and str(env_dir) in r.stdout, r.stderr[-3000:]

        _make_dummy_data(tmp_path)
        run = subprocess.run([str(env_dir / "bin" / "nest-ssl"), "train", "--config-name", "nest_tiny",
                              "model.train_ds.manifest_filepath=data/dummy_ssl/train_manifest.json",
                              "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json",
                              "trainer.devices=1", "trainer.max_steps=2", "trainer.val_check_interval=2",
                              "trainer.strategy=auto", "trainer.enable_progress_bar=false"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_clean_env())
        assert run.returncode == 0, run.stderr[-3000:]
        assert list((tmp_path / "nemo_experiments").rglob("*-last.ckpt")), run.stderr[-2000:]

        # without the [plot] extra, `nest-ssl plot` says which extra to install, in one line, exit 2
        plot = subprocess.run([str(env_dir / "bin" / "nest-ssl"), "plot", "nemo_experiments"], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path, env=_clean_env())
        assert plot.returncode == 2 and "pip install 'nest-ssl[plot]'" in plot.stderr, plot.stderr[-2000:]
        assert len(plot.stderr.strip().splitlines()) == 1, plot.stderr
    finally:
        shutil.rmtree(env_dir, ignore_errors=True)  # a CUDA torch with its libraries is several GB
