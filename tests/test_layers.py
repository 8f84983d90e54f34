"""The layering the README promises, checked on the source: models/ <- pipelines/ <- orchestration/ <- entry points."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("models", "pipelines")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules(*packages) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_importing_pipelines_and_models_leaves_dagster_out():
    names = [_name(p) for p in _modules(*LAYERS)]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'orchestration'))\n"
            "print(len(bad), bad[:5])\nsys.exit(1 if bad else 0)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


def test_lower_layers_never_import_upper_ones_even_inside_functions():
    for path in _modules(*LAYERS):
        upper = {m for m in _imports(path) if m.split(".")[0] in ("dagster", "dagster_dask", "orchestration")}
        assert not upper, f"{path.relative_to(ROOT)} imports {sorted(upper)}"
    for path in _modules("models"):
        assert not {m for m in _imports(path) if m.split(".")[0] == "pipelines"}, path


def test_only_settings_and_entry_points_touch_the_environment():
    for path in _modules(*LAYERS):
        if path == ROOT / "pipelines" / "settings.py":
            continue
        text = path.read_text()
        assert "os.environ" not in text and "getenv(" not in text and "putenv(" not in text, path


def test_no_import_cycle_between_project_modules():
    """Module-level imports of orchestration, pipelines and models form a DAG."""
    modules = {_name(p): p for p in _modules("orchestration", *LAYERS)}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, top_level_only=True):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        edges[name] = targets
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in edges.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_modules_and_functions_stay_small():
    """One concern per module: modules under ~400 lines, functions under ~60 (pipelines/, models/, orchestration/)."""
    too_long, long_functions = [], []
    for path in _modules("orchestration", *LAYERS):
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {len(lines)}")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {length}")
    assert not too_long and not long_functions, (too_long, long_functions)


def test_public_function_names_are_unique_across_pipelines():
    """No two `evaluate`, `write_report`, `load_config` that differ: a name says which thing it is."""
    seen = {}
    duplicates = []
    for path in _modules("pipelines"):
        if path.parent.name == "shops":  # shop adapters implement one protocol (native_path, to_record)
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and node.name != "main":
                if node.name in seen:
                    duplicates.append(f"{node.name}: {seen[node.name]} and {path.relative_to(ROOT)}")
                seen.setdefault(node.name, path.relative_to(ROOT))
    assert not duplicates, duplicates
