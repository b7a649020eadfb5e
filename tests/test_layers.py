"""The architecture, checked: every import points down this list of layers, never up or sideways
into a cycle. A new module goes in the layer of what it needs; needing something above means it
is in the wrong place."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A package may import only packages of a LOWER layer (or itself).
LAYERS = [
    ["zapckpt.common"],  # errors and the one subprocess wrapper: shared by everything below zap
    ["catalog", "fsbackend", "zapckpt.names", "zapckpt.state"],
    ["zapckpt.system", "zapckpt.net"],  # the pool, staging, locks, /proc; network namespaces
    ["zapckpt.criu"],
    ["zapckpt.store", "zapckpt.settings"],
    ["zapckpt.context"],
    ["zapckpt.pod"],
    ["zapckpt.records"],
    ["zapckpt.ops"],  # one module per command family
    ["zapckpt.view"],  # the history as a tree, and its FUSE adapter
    ["zapckpt.cli"],
    ["zapckpt.client"],  # the `zap` command: hands the command to the zap server, or runs cli here
    ["zapckpt.__main__"],  # python -m zapckpt
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _unit(module: str) -> str | None:
    """The layer unit a module belongs to: the longest LAYERS name that is a prefix of it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    return None


def _strings_named(node: ast.AST) -> set[str]:
    """Modules a piece of code reaches without an import statement: lazy("m") and
    import_module("m") (imported on first use), and `python -m m` argv lists (a process that
    runs module m: a dependency across the process boundary all the same)."""
    found: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str):
            fn = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            if fn in ("lazy", "import_module"):
                found.add(n.args[0].value)
        if isinstance(n, (ast.List, ast.Tuple)):
            items = n.elts
            for a, b in zip(items, items[1:]):
                if (isinstance(a, ast.Constant) and a.value == "-m" and isinstance(b, ast.Constant)
                        and isinstance(b.value, str) and b.value.split(".")[0] in ("zapckpt", "catalog", "fsbackend")):
                    found.add(b.value)  # fmt: skip
    return found


def _imports(path: Path, module: str) -> set[str]:
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from zapckpt import names`
    return found | _strings_named(tree)


def _modules():
    for top in ("zapckpt", "fsbackend", "catalog"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in rel:
                continue  # Alembic's scripts: they import only catalog and alembic
            yield path, ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def test_every_module_has_a_layer():
    homeless = [m for _p, m in _modules() if _unit(m) is None and m != "zapckpt"]
    assert not homeless, f"add these to a layer in tests/test_layers.py: {homeless}"


def test_imports_point_down():
    wrong = []
    for path, module in _modules():
        me = _unit(module)
        if me is None:
            continue
        for target in _imports(path, module):
            them = _unit(target)
            if them is None or them == me:
                continue
            if RANK[them] >= RANK[me]:
                wrong.append(f"{module} imports {target} ({me} is not above {them})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def _module_names() -> set[str]:
    return {m for _p, m in _modules()}


def test_no_cycles_inside_a_package():
    """Within one layer unit too, modules form a hierarchy: a cycle (a imports b, b imports a,
    at the top or inside a function) means one of them holds what belongs in the other."""
    names = _module_names()
    graph: dict[str, set[str]] = {}
    for path, module in _modules():
        me = _unit(module)
        deps = set()
        for target in _imports(path, module):
            # `from zapckpt.pod import console` names zapckpt.pod.console; a package's __init__ is not a peer
            while target and target not in names:
                target = target.rpartition(".")[0]
            if target and target != module and _unit(target) == me and not target == me:
                deps.add(target)
        graph[module] = deps
    cycles = []
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_backends_and_catalog_share_only_the_common_layer():
    """The snapshot backends and the catalog are usable without the orchestration layer."""
    for path, module in _modules():
        if module.split(".")[0] in ("fsbackend", "catalog"):
            zap = {t for t in _imports(path, module) if t.split(".")[0] == "zapckpt"}
            assert all(t.startswith("zapckpt.common") for t in zap), (module, zap)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check itself: an import from a lower layer to a higher one is found, and so are
    modules reached by name (lazy, import_module) or run as a process (`python -m`)."""
    f = tmp_path / "pool.py"
    f.write_text("from zapckpt.ops import checkpoint\nfrom ..cli import main\n"
                 "x = lazy('zapckpt.view.tree')\nargv = [sys.executable, '-m', 'zapckpt.cli', 'watch-serve']\n")
    targets = _imports(f, "zapckpt.system.pool")
    assert {"zapckpt.ops.checkpoint", "zapckpt.cli.main", "zapckpt.view.tree", "zapckpt.cli"} <= targets
    assert RANK[_unit("zapckpt.ops.checkpoint")] > RANK[_unit("zapckpt.system.pool")]


# What reads or writes the catalog: a query built (select, insert...), a session asked for rows
# or told to add or delete one, a raw database connection. Only catalog/ does any of it;
# everything else calls its functions (restic's repository layer). Session *type* imports, and
# commit/rollback/flush (an operation decides when its work is durable), are not queries.
_QUERY_NAMES = {"select", "insert", "update", "delete", "text", "func", "and_", "or_"}
_SESSION_CALLS = {"add", "add_all", "get", "delete", "scalars", "scalar", "execute", "query", "merge", "connection"}
_ALLOWED_OUTSIDE = {"zapckpt.cli.forkserver"}  # warms SQLAlchemy's dialect before it forks: no query


def _catalog_access(path: Path) -> list[str]:
    found = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "sqlalchemy":
            found += [f"imports {a.name} from {n.module}" for a in n.names if a.name in _QUERY_NAMES]
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
            found += [f"imports {m}" for m in names if m.split(".")[0] in ("sqlite3", "psycopg")]
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _SESSION_CALLS
                and isinstance(n.func.value, ast.Name) and n.func.value.id in ("s", "session")):
            found.append(f"calls {n.func.value.id}.{n.func.attr}() at line {n.lineno}")  # fmt: skip
    return found


def test_only_the_catalog_reads_and_writes_the_catalog():
    wrong = []
    for path, module in _modules():
        if module.split(".")[0] == "catalog" or module in _ALLOWED_OUTSIDE:
            continue
        wrong += [f"{module} {what}" for what in _catalog_access(path)]
    assert not wrong, "catalog access outside catalog/ (add a function to catalog/):\n" + "\n".join(wrong)


def test_the_catalog_access_check_sees_a_query(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from sqlalchemy import select\nimport sqlite3\ndef f(s):\n    return s.scalars(select(X))\n")
    assert len(_catalog_access(f)) == 3
