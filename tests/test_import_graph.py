"""The layering of nest_ssl's packages: none imports a package above it (local/import_graph.py prints the graph).

Lowest first: errors, config, seeding -> modules -> models -> checkpoint -> data -> prepare -> train (optim) ->
export -> asr -> evaluate -> cli. Every import statement counts, including those inside functions.
"""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "local" / "import_graph.py"

# (package, higher package) edges tolerated for now, each with who owns it and why; none at the moment.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _graph_module():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_package_imports_one_above_it():
    ig = _graph_module()
    graph = ig.import_graph(REPO)
    for pkg in graph:
        ig.layer_of(pkg)  # every package (and top-level module) has a layer
    bad = [(pkg, other, where) for pkg, other, where in ig.upward_edges(graph) if (pkg, other) not in KNOWN_EXCEPTIONS]
    listing = "\n".join(f"  {pkg} -> {other}: {'; '.join(where)}" for pkg, other, where in bad)
    assert not bad, f"upward imports:\n{listing}\n\nthe graph (package -> packages it imports):\n{ig.format_graph(graph)}"
    stale = [edge for edge in KNOWN_EXCEPTIONS if edge not in {(p, o) for p, o, _ in ig.upward_edges(graph)}]
    assert not stale, f"known exceptions that no longer occur (remove them): {stale}"


def test_train_and_export_do_not_import_each_other():
    graph = _graph_module().import_graph(REPO)
    assert "export" not in graph["train"] and "train" not in graph["export"], graph
    assert "train" not in graph["evaluate"] and "export" not in graph["evaluate"], graph


def test_checkpoint_package_builds_models_only_inside_functions():
    """nest_ssl.checkpoint imports errors and config at the top; the model package only where a model is built."""
    allowed_top = {"errors", "config", "checkpoint"}
    for path in sorted((REPO / "nest_ssl" / "checkpoint").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module-level statements only
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nest_ssl."):
                pkg = node.module.split(".")[1]
                assert pkg in allowed_top, f"{path.name}:{node.lineno} imports {node.module} at module level"
        nested = {n.module.split(".")[1] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("nest_ssl.")}
        assert nested <= allowed_top | {"models"}, (path.name, nested)


def test_a_layer_violation_is_found(tmp_path):
    """The check itself: a module of a low package importing a high one, even inside a function, is reported."""
    ig = _graph_module()
    pkg = tmp_path / "nest_ssl"
    for sub in ("models", "train"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("__version__ = '0'\n")
    (pkg / "models" / "nest.py").write_text("def f():\n    from ..train import run\n")
    (pkg / "train" / "run.py").write_text("from nest_ssl import models, __version__\n")
    graph = ig.import_graph(tmp_path)
    assert graph == {"models": {"train": ["nest_ssl/models/nest.py:2 imports nest_ssl.train"]},
                     "train": {"models": ["nest_ssl/train/run.py:1 imports nest_ssl.models"]}}
    assert [(p, o) for p, o, _ in ig.upward_edges(graph)] == [("models", "train")]


def test_script_prints_the_graph():
    p = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 or KNOWN_EXCEPTIONS, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("layers, lowest first: errors/config/seeding -> modules")
    assert any(line.startswith("train ") and "checkpoint" in line for line in lines), p.stdout
