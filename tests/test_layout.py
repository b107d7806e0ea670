"""The layout shows the architecture: each folder one job, imports only downward, no cycles.

Read from the source with `ast`, imports inside functions included. Run as a script to print the
figures: ``python tests/test_layout.py [ROOT]``.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_dirs(root: Path) -> dict[str, Path]:
    """``videolm.*`` package name -> its folder, from pyproject's package-dir."""
    project = tomllib.loads((root / "pyproject.toml").read_text())
    return {name: root / folder for name, folder in project["tool"]["setuptools"]["package-dir"].items()}


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for package, folder in package_dirs(root).items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "videolm" and parts:  # the front door's own folder holds nothing but it
                continue
            found[".".join([package, *parts])] = path
    return found


def _imports(tree: ast.AST, name: str, is_package: bool):
    """``(target, inside_function)`` for every import in a module's syntax tree."""
    out = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = name.split(".")[: len(name.split(".")) - child.level + (1 if is_package else 0)]
                    base = ".".join(parts + ([child.module] if child.module else []))
                out.append((base, in_function))
                out.extend((f"{base}.{a.name}", in_function) for a in child.names)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            visit(child, inner)

    visit(tree, False)
    return out


def graph(root: Path):
    """``edges[module] = {module: inside_function_only}`` among the package's modules, and the
    imports of outside modules made inside functions."""
    mods = modules(root)
    edges: dict[str, dict[str, bool]] = defaultdict(dict)
    outside_in_functions = []
    for name, path in mods.items():
        for target, in_function in _imports(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            if target in mods and target != name:
                edges[name][target] = edges[name].get(target, True) and in_function
            elif not target.startswith("videolm") and in_function:
                outside_in_functions.append((name, target.split(".")[0]))
    return mods, edges, outside_in_functions


def cycles(edges: dict[str, dict[str, bool]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in list(edges):
        if v not in index:
            strong(v)
    return out


def folder_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "videolm"


def folder_edges(edges) -> dict[str, dict[str, bool]]:
    out: dict[str, dict[str, bool]] = defaultdict(dict)
    for a, targets in edges.items():
        for b in targets:
            if folder_of(a) != folder_of(b):
                out[folder_of(a)][folder_of(b)] = False
    return out


def lines_per_folder(mods: dict[str, Path]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for name, path in mods.items():
        counts[folder_of(name)] += len(path.read_text().splitlines())
    return dict(counts)


# the layers, bottom to top: a folder may import its own layer's folders only as listed, and any lower one
LAYERS = [["core"], ["data"], ["tokenizers", "lm", "diffusion"], ["tasks"], ["evaluation"], ["train"], ["cli"],
          ["videolm"]]


def layer_of(folder: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if folder in names)


# ---------------------------------------------------------------------------------------- tests


def test_no_import_cycles_between_files_or_folders():
    _, edges, _ = graph(ROOT)
    assert cycles(edges) == []
    assert cycles(folder_edges(edges)) == []


def test_imports_run_only_downward():
    _, edges, _ = graph(ROOT)
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                    if layer_of(folder_of(b)) > layer_of(folder_of(a)))
    assert upward == []
    across = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                    if folder_of(a) != folder_of(b) and layer_of(folder_of(a)) == layer_of(folder_of(b)))
    allowed = {("diffusion", "tokenizers")}  # the DiT's latents are the video tokenizer's
    assert [x for x in across if (folder_of(x.split(" -> ")[0]), folder_of(x.split(" -> ")[1])) not in allowed] == []


def test_no_import_inside_a_function_but_optional_heavy_ones():
    _, edges, outside = graph(ROOT)
    inside = sorted(f"{a} -> {b}" for a, targets in edges.items() for b, only_inside in targets.items() if only_inside)
    assert inside == []
    optional = {"matplotlib", "peft", "loguru"}  # used by one feature each (plots, LoRA, quieting a library)
    assert sorted({m for _, m in outside} - optional) == []


def test_no_folder_holds_more_than_30_percent_of_the_code():
    counts = lines_per_folder(modules(ROOT))
    total = sum(counts.values())
    assert max(counts.values()) <= 0.3 * total, counts


def report(root: Path) -> dict:
    mods, edges, outside = graph(root)
    counts = lines_per_folder(mods)
    return {
        "modules": len(mods),
        "file_cycles": cycles(edges),
        "folder_cycles": cycles(folder_edges(edges)),
        "imports_inside_functions": sum(1 for t in edges.values() for only in t.values() if only)
        + len(outside),
        "lines_per_folder": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "largest_share": round(max(counts.values()) / sum(counts.values()), 3),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(report(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT), indent=1))
