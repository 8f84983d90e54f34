"""DVC stage entry point: `python -m orchestration.dvc_stages <asset group>` (see dvc.yaml).

One implementation, two drivers: a DVC stage is one asset group of the Dagster graph (catalogue, embeddings,
classifiers, holdout, inference, recategorisation, reports), materialised in the graph's own stage order
(orchestration/main_job.py) into the project's Dagster instance, so DVC-driven runs also appear in the UI. DVC
decides *whether* a stage runs (hashes of deps and params); Dagster decides *how* (partitions, blocking checks,
IO manager). params.yaml is read here, once, into the run's Settings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from pipelines.files import atomic_write_text
from pipelines.settings import ROOT, Settings, settings_from

PARAMS_PATH = ROOT / "params.yaml"
PARAM_KEYS = {"data": {"raw", "work"}, "embed": {"text_encoder", "image_encoder"}, "train": {"seed"}}
# DVC stages in dvc.yaml order; each is the asset group of the same name (tests/test_dvc.py checks both files)
STAGES = ("catalogue", "embeddings", "classifiers", "holdout", "inference", "recategorisation", "reports")


def load_params(path: Path | str | None = None) -> dict:
    """params.yaml, checked: every key the stages read is present and nothing unknown is silently ignored."""
    path = Path(path or PARAMS_PATH)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (DVC params file)")
    params = yaml.safe_load(path.read_text()) or {}
    for section, keys in PARAM_KEYS.items():
        got = set(params.get(section) or {})
        if got != keys:
            raise ValueError(f"{path}: section {section!r} must hold exactly {sorted(keys)}, got {sorted(got)}")
    if set(params) - set(PARAM_KEYS):
        raise ValueError(f"{path}: unknown sections {sorted(set(params) - set(PARAM_KEYS))}")
    return params


def settings_from_params(params: dict, environ=None) -> Settings:
    """params.yaml's values over the environment. Relative paths are relative to the project root."""
    raw = (ROOT / params["data"]["raw"]).resolve()
    if not raw.is_dir():
        raise FileNotFoundError(f"params data.raw: {raw} is not a directory of raw exports")
    return settings_from(environ or {}, data_root=str(raw), work_dir=str((ROOT / params["data"]["work"]).resolve()),
                         seed=int(params["train"]["seed"]), text_encoder=params["embed"]["text_encoder"],
                         image_encoder=params["embed"]["image_encoder"], quiet=True)


def group_plan(defs, group: str):
    """The graph's stages restricted to one asset group."""
    from dagster import AssetSelection

    from orchestration.main_job import stage_plan

    plan = stage_plan(defs, AssetSelection.groups(group))
    if not plan:
        raise ValueError(f"no asset in group {group!r}")
    return plan


def run(stage: str, settings: Settings, dagster_home: Path, log=print) -> dict:
    """Materialise the stage's asset group (every partition, graph order, blocking checks). -> per-asset summary."""
    from orchestration.definitions import build_definitions
    from orchestration.main_job import run_plan
    from orchestration.run import quiet_third_party
    from orchestration.runners import project_instance

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    quiet_third_party()
    defs = build_definitions(settings)
    summary = run_plan(defs, group_plan(defs, stage), project_instance(dagster_home), log=log)
    if stage == "reports":
        write_scores(settings.work_dir / "report")
    return summary


def write_scores(report_dir: Path) -> Path:
    """report/scores.json: one row per model with its test metrics ({model, hF1, strict_hF1, ...}), DVC plot data."""
    results = json.loads((report_dir / "benchmark.json").read_text())["results"]
    tests = {name: r["test"] for name, r in sorted(results.items()) if r.get("test")}
    # the same fields in every row (DVC's plot renderer fails on rows with different keys, e.g. ECE for models only)
    shared = set.intersection(*(set(k for k, v in t.items() if isinstance(v, (int, float))) for t in tests.values()))
    rows = [{"model": name, **{k: t[k] for k in sorted(shared)}} for name, t in tests.items()]
    return atomic_write_text(report_dir / "scores.json", json.dumps(rows, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m orchestration.dvc_stages", description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=list(STAGES))
    ap.add_argument("--params", default=str(PARAMS_PATH))
    args = ap.parse_args(argv)
    home = Path(os.environ.get("DAGSTER_HOME") or ROOT / ".dagster_home")
    from orchestration.cli import quiet_libraries

    quiet_libraries()
    try:
        run(args.stage, settings_from_params(load_params(args.params), os.environ), home)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"stage {args.stage}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
