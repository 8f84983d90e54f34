"""Which code folders an asset group runs: the static import closure (function-level imports included) of the
modules defining its assets, cut at `pipelines/<stage>/` (models/ by module). dvc.yaml's deps must name every one
(tests/test_dvc.py), so a stage cannot miss a dependency it really has."""
from __future__ import annotations

import ast
from pathlib import Path

from pipelines.settings import ROOT

PACKAGES = ("pipelines", "models")


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES + ("orchestration",) and _module_file(m)}


def import_closure(modules: list[str]) -> set[str]:
    """Every project module reachable from `modules` (orchestration modules are followed but not reported)."""
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module in seen or not _module_file(module):
            continue
        seen.add(module)
        todo.extend(_imports(_module_file(module)))
    return {m for m in seen if m.split(".")[0] in PACKAGES and "." in m}  # package roots are empty __init__s


def code_folder(module: str) -> str:
    """pipelines.classify.train -> pipelines/classify; pipelines.settings -> pipelines/settings.py;
    models.fusion -> models/fusion.py (models/ also holds the configs that DVC tracks as params, so its modules are
    named one by one: a changed strategy YAML must not re-run the embedding stage)"""
    parts = module.split(".")
    if parts[0] == "models":
        return "/".join(parts) + ".py"
    path = _module_file(module)
    return "/".join(parts[:2]) if len(parts) > 2 or path.name == "__init__.py" else "/".join(parts) + ".py"


def group_code_folders(asset_modules: list[str]) -> set[str]:
    return {code_folder(m) for m in import_closure(asset_modules)}


def group_modules(defs, group: str) -> list[str]:
    """The modules whose functions compute the assets (and checks) of one asset group."""
    graph = defs.resolve_asset_graph()
    keys = {k for k in graph.get_all_asset_keys() if graph.get(k).group_name == group and graph.get(k).is_materializable}
    modules = set()
    for assets_def in defs.assets or []:
        if hasattr(assets_def, "keys") and set(assets_def.keys) & keys:
            modules.add(assets_def.op.compute_fn.decorated_fn.__module__)
    for check_def in defs.asset_checks or []:
        if {c.asset_key for c in check_def.check_specs} & keys:
            modules.add(check_def.op.compute_fn.decorated_fn.__module__)
    return sorted(modules)
