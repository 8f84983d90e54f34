"""DVC stage entry points: `python -m orchestration.dvc_stages <stage>` (see dvc.yaml).

One implementation, two drivers: a stage materialises the same Dagster assets as `prodcat run`, in process, with
the main job's own runner (orchestration.jobs.run_main restricted to the stage's assets), into the project's Dagster
instance, so DVC-driven runs also appear in the Dagster UI. DVC decides *whether* a stage runs (hashes of deps and
params); Dagster decides *how* (partitions, blocking checks, IO manager). Tunables come from params.yaml.
Like orchestration/cli.py's `run`, dagster is imported lazily, inside the functions that drive it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from pipelines.settings import ROOT

PARAMS_PATH = ROOT / "params.yaml"
# stage -> the main job's assets it materialises (orchestration.jobs.main_job_stages gives order + partitions).
STAGES = {
    "normalise": ["normalized_products", "catalogue", "splits"],
    "embed": ["text_embeddings", "image_embeddings", "joint_space", "joint_embeddings", "lexical_space",
              "lexical_embeddings"],
    "train": ["baselines", "classifiers"],
    "holdout": ["holdout_training_set", "holdout_fewshot", "holdout_evaluations"],
    "inference": ["stage1_model"],
    "recategorise": ["recategorisation_clusters", "recategorisation_report"],
    # everything that writes report/ (benchmark.md gains the cross-platform and two-stage sections)
    "report": ["benchmark_report", "holdout_report", "routing_threshold"],
}
PARAM_KEYS = {"data": {"raw", "work"}, "embed": {"text_encoder", "image_encoder"}, "train": {"seed"}}


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


def apply_params(params: dict) -> dict:
    """Point the code at params.yaml's values: env for what pipelines reads (data root, work dir, seed; also MLflow's
    registry via work dir), resource settings for Dagster. Relative paths are relative to the project root."""
    raw = (ROOT / params["data"]["raw"]).resolve()
    work = (ROOT / params["data"]["work"]).resolve()
    if not raw.is_dir():
        raise FileNotFoundError(f"params data.raw: {raw} is not a directory of raw exports")
    os.environ.update(PRODCAT_DATA=str(raw), PRODCAT_WORK=str(work), PRODCAT_SEED=str(int(params["train"]["seed"])))
    return {"data_root": str(raw), "work_dir": str(work), "text_encoder": params["embed"]["text_encoder"],
            "image_encoder": params["embed"]["image_encoder"]}


def definitions(settings: dict):
    """The project's Dagster definitions with params.yaml's paths and encoders."""
    from dagster import Definitions

    from orchestration.assets.embeddings import EncoderChoice
    from orchestration.definitions import build_definitions

    defs = build_definitions(data_root=settings["data_root"], work_dir=settings["work_dir"])
    encoders = EncoderChoice(text=settings["text_encoder"], image=settings["image_encoder"])
    return Definitions(assets=defs.assets, asset_checks=defs.asset_checks, sensors=defs.sensors,
                       resources={**defs.resources, "encoders": encoders})


def run(stage: str, params: dict | None = None, instance=None, log=print) -> dict:
    """Materialise the stage's assets (every partition, dependency order, blocking checks). -> per-asset summary."""
    from orchestration.jobs import project_instance, run_main

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    settings = apply_params(params or load_params())
    summary = run_main(definitions(settings), instance or project_instance(), log=log, only=set(STAGES[stage]))
    if not summary:
        raise RuntimeError(f"stage {stage}: none of {STAGES[stage]} is in the main job (orchestration.jobs)")
    if stage == "report":
        write_scores(Path(settings["work_dir"]) / "report")
    return summary


def write_scores(report_dir: Path) -> Path:
    """report/scores.json: one row per model with its test metrics ({model, hF1, strict_hF1, ...}), DVC plot data."""
    results = json.loads((report_dir / "benchmark.json").read_text())["results"]
    tests = {name: r["test"] for name, r in sorted(results.items()) if r.get("test")}
    # the same fields in every row (DVC's plot renderer fails on rows with different keys, e.g. ECE for models only)
    shared = set.intersection(*(set(k for k, v in t.items() if isinstance(v, (int, float))) for t in tests.values()))
    rows = [{"model": name, **{k: t[k] for k in sorted(shared)}} for name, t in tests.items()]
    path = report_dir / "scores.json"
    path.write_text(json.dumps(rows, indent=1))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m orchestration.dvc_stages", description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=list(STAGES))
    ap.add_argument("--params", default=str(PARAMS_PATH))
    args = ap.parse_args(argv)
    os.environ.setdefault("PRODCAT_QUIET", "1")
    try:
        run(args.stage, load_params(args.params))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"stage {args.stage}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
