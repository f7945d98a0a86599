"""The layering rules, read from the source: schemas knows nothing of ingest or query, ingest
nothing of query, the app (query/app) nothing imports, and no module imports itself back through
others (an import circle), counting imports made inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
TOPS = ("schemas", "ingest", "query")


def _modules() -> Dict[str, Path]:
    out = {}
    for top in TOPS:
        for p in (ROOT / top).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out["lookalike." + ".".join(parts)] = p
    return out


def _imports(path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The project modules a file imports, anywhere in it (a `from pkg import name` that names a
    submodule counts as importing that submodule)."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        found.update(n for n in names if n in modules)
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return "app" if parts[1:3] == ["query", "app"] else parts[1]


def test_no_module_imports_upwards():
    rank = {"schemas": 0, "ingest": 1, "query": 2, "app": 3}
    bad = [(m, d) for m, deps in _graph().items() for d in deps if rank[_layer(d)] > rank[_layer(m)]]
    assert not bad, bad


def test_no_import_circle():
    graph = _graph()
    state: Dict[str, int] = {}
    stack: List[str] = []
    circles: List[List[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_the_rules_see_an_import_made_inside_a_function(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from lookalike.query.search import Searcher\n")
    assert _imports(f, _modules()) == {"lookalike.query.search"}


# The modules that read the environment: the settings (LOOKALIKE_*, and the variables of the
# libraries the settings stand in for) and the CLI's option layer, which builds the settings.
ENV_READERS = {"lookalike.ingest.settings"}
SETTINGS_BUILDERS = {"lookalike.ingest.settings", "lookalike.query.app.options"}


def _env_reads_and_settings_built(path: Path) -> List[str]:
    """`os.environ.get(...)`, `os.getenv(...)`, `os.environ[...]` read, `"X" in os.environ`, and
    `Settings()` built: where in the file (writes for third-party libraries are not reads)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        text = ast.unparse(node) if isinstance(node, (ast.Call, ast.Subscript, ast.Compare)) else ""
        if isinstance(node, ast.Call) and (text.startswith(("os.environ.get(", "os.getenv("))):
            found.append(f"{node.lineno}: {text[:60]}")
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and text.startswith("os.environ["):
            found.append(f"{node.lineno}: {text[:60]}")
        elif isinstance(node, ast.Compare) and "os.environ" in text and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            found.append(f"{node.lineno}: {text[:60]}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Settings":
            found.append(f"{node.lineno}: Settings(...)")
    return found


def test_the_environment_is_read_only_by_the_settings():
    """One Settings, built at the entry point and passed down: no module reads the environment
    but the settings, and only the settings module and the CLI's option layer build a Settings
    (the Python API's entry points take one, or resolve() builds it)."""
    bad = {}
    for module, path in _modules().items():
        hits = _env_reads_and_settings_built(path)
        if module in ENV_READERS:
            continue
        if module in SETTINGS_BUILDERS:
            hits = [h for h in hits if not h.endswith("Settings(...)")]
        if hits:
            bad[module] = hits
    assert not bad, bad


def test_the_environment_check_finds_a_read(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nx = os.environ.get('HOME')\ny = os.environ['A']\nos.environ['B'] = '1'\n"
                     "z = 'C' in os.environ\ns = Settings()\n")
    assert [h.split(":")[0] for h in _env_reads_and_settings_built(probe)] == ["2", "3", "5", "6"]
