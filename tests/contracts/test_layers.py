"""gpunet's import layers: every import of a gpunet module, function-level ones included, points down; the
import graph has no cycle; gpunet's own modules are never imported lazily; no module reaches into another's
private names beyond an allow-list that may only shrink; no module grows into a god-module."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "gpunet"

#: the layer of each module (by longest matching prefix); an import must point to a lower layer, or stay
#: inside its own subpackage on the same layer
LAYERS = {
    "gpunet._version": 0, "gpunet._files": 0, "gpunet._optional": 0, "gpunet.errors": 0,
    "gpunet.checks": 0.3, "gpunet.metrics": 0.3, "gpunet.datasets": 0.5, "gpunet.tabular": 0.5,
    "gpunet.backend": 1, "gpunet.distributed": 1,
    "gpunet.nn": 2, "gpunet.optim": 2, "gpunet.callbacks": 2,
    "gpunet.ops": 3,
    "gpunet.training": 4, "gpunet.saving": 4, "gpunet.describe": 4, "gpunet.onnx": 4, "gpunet.plot": 4,
    "gpunet.model": 5, "gpunet.stack": 5.5,
    "gpunet": 6, "gpunet.sklearn": 6, "gpunet.kernels": 6,
    "gpunet.bench": 7, "gpunet.cli": 7.5, "gpunet.__main__": 8,
}
#: the only function-level imports of gpunet modules: the ops factory keeps the CUDA package (and CuPy) out
#: of the import of gpunet.ops
LAZY_ALLOWED = {("gpunet.ops", "gpunet.ops.cuda")}
#: private names read across modules; may only shrink (a test fails when an entry is no longer needed)
PRIVATE_ALLOWED = set()
#: lines per module (a module over this does more than one job)
MAX_LINES = 500


def modules():
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = p
    return out


MODS = modules()


def layer(name):
    best = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len)
    return LAYERS[best]


def subpackage(name):
    parts = name.split(".")
    return ".".join(parts[:2])


def targets(cur, node):
    """The gpunet modules an import statement loads (``from pkg import x`` loads ``pkg``, and ``pkg.x`` when
    that is a module)."""
    base = cur.split(".")
    if MODS[cur].name == "__init__.py":
        base = base + ["__init__"]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            parent = ".".join(base[: len(base) - node.level])
            head = f"{parent}.{node.module}" if node.module else parent
        else:
            head = node.module or ""
        names = [f"{head}.{a.name}" for a in node.names]
        if not all(n in MODS for n in names):  # names from the package itself (not only its submodules)
            names.append(head)
    else:
        names = [a.name for a in node.names]
    out = set()
    for n in names:
        while n and n not in MODS:
            n = n.rpartition(".")[0]
        if n and n != cur and n.startswith("gpunet"):
            out.add(n)
    return out


def import_edges():
    """``{module: {(target, lazy, line)}}`` over every import statement."""
    edges = {}
    for name, path in MODS.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in tree.body}
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in targets(name, node):
                    found.add((t, id(node) not in top, node.lineno))
        edges[name] = found
    return edges


EDGES = import_edges()


def graph():
    # the root package re-exports its children: that is not a back-edge of the children
    return {m: {t for t, _, _ in es} for m, es in EDGES.items() if m != "gpunet"} | {"gpunet": set()}


def cycles(g):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
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

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert all(layer(m) is not None for m in MODS)


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_imports_point_down_only():
    upward = []
    for m, es in EDGES.items():
        for t, _, line in es:
            if m == "gpunet" and t.startswith("gpunet."):
                if layer(t) <= layer(m):
                    continue  # the root package's public re-exports
            same_package = subpackage(m) == subpackage(t) and subpackage(m) != "gpunet"
            if not (layer(t) < layer(m) or (layer(t) == layer(m) and same_package)):
                upward.append(f"{MODS[m].relative_to(ROOT)}:{line} {m} (L{layer(m)}) -> {t} (L{layer(t)})")
    assert upward == []


def test_gpunet_modules_are_never_imported_lazily():
    lazy = [f"{MODS[m].relative_to(ROOT)}:{line} -> {t}" for m, es in EDGES.items() for t, is_lazy, line in es
            if is_lazy and not any(m == a and (t == b or t.startswith(b + ".")) for a, b in LAZY_ALLOWED)]
    assert lazy == []


def _defined_private_names(tree):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_")}


def private_uses():
    """``(module, name)`` for every private name a module reads that it does not define itself."""
    uses = set()
    for m, path in MODS.items():
        tree = ast.parse(path.read_text(), str(path))
        own = _defined_private_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpunet"):
                uses |= {(m, a.name) for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                         and f"{node.module}.{a.name}" not in MODS}
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                if node.attr not in own:
                    uses.add((m, node.attr))
    return uses


def test_no_module_reaches_into_another_modules_private_names():
    assert private_uses() - PRIVATE_ALLOWED == set()


def test_the_private_name_allow_list_only_shrinks():
    assert PRIVATE_ALLOWED - private_uses() == set(), "remove the entries no longer needed"


@pytest.mark.parametrize("name", sorted(MODS))
def test_no_module_is_a_god_module(name):
    lines = MODS[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{MODS[name].relative_to(ROOT)} has {lines} lines: split it by job"
