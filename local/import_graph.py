#!/usr/bin/env python3
"""Prints the import graph between nest_ssl's packages and the edges that break its layering.

    python local/import_graph.py [--repo DIR]

Every `import` and `from ... import` statement of every module under nest_ssl/ counts, including those inside
functions (a lazy import is still a dependency). The layering, lowest first, is LAYERS below: a package may import
itself and anything in its own layer or lower, never higher. tests/test_import_graph.py checks it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

# Lowest first; packages in one tuple share a layer. Top-level modules count as packages of their own name.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "config", "seeding"),
    ("modules",),
    ("models",),
    ("checkpoint",),
    ("data",),
    ("prepare",),
    ("train", "optim"),
    ("export",),
    ("asr",),
    ("evaluate",),
    ("cli",),
)
ROOT = "nest_ssl"


def layer_of(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise KeyError(f"{ROOT}.{package} is in no layer of LAYERS (local/import_graph.py); add it where it belongs")


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str | None:
    """`nest_ssl.train.run` -> `train`, `nest_ssl.errors` -> `errors`; None for the root and for other packages."""
    parts = module.split(".")
    if parts[0] != ROOT or len(parts) < 2:
        return None
    return parts[1]


def imported_modules(path: Path, module: str, top_level: set[str]) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a file; `from nest_ssl import x` names nest_ssl.x when x is
    one of the `top_level` modules or packages (not, say, __version__)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == ROOT:  # `from nest_ssl import checkpoint`: the names are the modules
                found.extend((f"{ROOT}.{alias.name}", node.lineno) for alias in node.names if alias.name in top_level)
            else:
                found.append((target, node.lineno))
    return found


def import_graph(repo: Path) -> dict[str, dict[str, list[str]]]:
    """package -> {imported package -> ["nest_ssl/x/y.py:LINE imports nest_ssl.z.w", ...]} (other packages only)."""
    src = repo / ROOT
    top_level = {p.stem for p in src.glob("*.py")} | {p.name for p in src.iterdir() if (p / "__init__.py").is_file()}
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(src.rglob("*.py")):
        module = module_name(path, src)
        pkg = package_of(module)
        if pkg is None:
            continue
        edges = graph.setdefault(pkg, {})
        for target, line in imported_modules(path, module, top_level):
            other = package_of(target)
            if other is not None and other != pkg:
                edges.setdefault(other, []).append(f"{path.relative_to(repo)}:{line} imports {target}")
    return graph


def upward_edges(graph: dict[str, dict[str, list[str]]]) -> list[tuple[str, str, list[str]]]:
    """(package, higher package it imports, where) for every edge against LAYERS."""
    bad = []
    for pkg, edges in sorted(graph.items()):
        for other, where in sorted(edges.items()):
            if layer_of(other) > layer_of(pkg):
                bad.append((pkg, other, where))
    return bad


def format_graph(graph: dict[str, dict[str, list[str]]]) -> str:
    order = sorted(graph, key=lambda p: (layer_of(p), p))
    lines = []
    for pkg in order:
        targets = sorted(graph[pkg], key=lambda p: (layer_of(p), p))
        lines.append(f"{pkg:<11} -> {', '.join(targets) if targets else '(nothing in nest_ssl)'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    graph = import_graph(args.repo)
    print("layers, lowest first: " + " -> ".join("/".join(layer) for layer in LAYERS))
    print(format_graph(graph))
    bad = upward_edges(graph)
    for pkg, other, where in bad:
        print(f"UPWARD {pkg} -> {other}: {'; '.join(where)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
