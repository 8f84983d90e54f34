"""dvc.yaml drives the same code as Dagster: its stages, deps, params and outputs agree with orchestration.dvc_stages,
params.yaml and what the stages really write. The full `dvc repro` in a clone is `slow` (make test-slow)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey

from orchestration import dvc_stages as stages
from pipelines.settings import ROOT, SAMPLE_DIR
from pipelines.classify.train import STRATEGIES

DVC = ROOT / ".venv-dvc" / "bin" / "dvc"


def _resolved(text: str, params: dict) -> str:
    """DVC's ${a.b} templating against params.yaml."""
    def value(match):
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, text)


@pytest.fixture(scope="module")
def pipeline():
    params = stages.load_params()
    return yaml.safe_load(_resolved((ROOT / "dvc.yaml").read_text(), params)), params


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def _outs(stage: dict) -> list[str]:
    return _paths(stage.get("outs")) + _paths(stage.get("metrics")) + _paths(stage.get("plots"))


def test_dvc_stages_are_the_asset_groups_in_graph_order(pipeline):
    """One DVC stage per asset group, in an order the graph allows, together running every asset exactly once."""
    from orchestration.definitions import defs
    from orchestration.main_job import asset_names, stage_plan

    dvc, _ = pipeline
    assert tuple(dvc["stages"]) == stages.STAGES
    for name, stage in dvc["stages"].items():
        assert stage["cmd"] == f"python -m orchestration.dvc_stages {name}"
    graph = defs.resolve_asset_graph()
    groups = {n: graph.get(AssetKey(n)).group_name for n in asset_names(defs)}
    assert set(groups.values()) == set(stages.STAGES)
    position = {g: i for i, g in enumerate(stages.STAGES)}
    for key in graph.toposorted_asset_keys:  # no asset reads from a later DVC stage
        for parent in graph.get(key).parent_keys:
            if graph.get(parent).is_materializable:
                assert position[groups[parent.to_user_string()]] <= position[groups[key.to_user_string()]], (key, parent)
    planned = [a for g in stages.STAGES for s in stages.group_plan(defs, g) for a in s.assets]
    assert sorted(planned) == sorted(a for s in stage_plan(defs) for a in s.assets) == asset_names(defs)


def test_code_deps_cover_each_stages_import_closure(pipeline):
    """dvc.yaml names whole code folders; every folder a stage's asset modules import (transitively, function-level
    imports included) is among them, so a missing code dependency cannot slip in."""
    from orchestration.code_deps import group_code_folders, group_modules
    from orchestration.definitions import defs

    dvc, _ = pipeline
    for name, stage in dvc["stages"].items():
        needed = group_code_folders(group_modules(defs, name))
        assert needed, name
        missing = {f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in stage["deps"])}
        assert not missing, f"dvc.yaml stage {name} misses code deps {sorted(missing)}"
        assert "orchestration" in stage["deps"]


def test_deps_exist_or_come_from_an_earlier_stage(pipeline):
    dvc, _ = pipeline
    produced = set()
    for name, stage in dvc["stages"].items():  # dvc.yaml lists stages in dependency order
        for dep in stage["deps"]:
            assert (ROOT / dep).exists() or dep in produced, f"{name}: dependency {dep} neither exists nor is produced"
        produced |= set(_outs(stage))
    for name, stage in dvc["stages"].items():
        for out in _outs(stage):
            assert out.startswith(dvc_work(pipeline)), f"{name}: output {out} outside data.work"


def dvc_work(pipeline) -> str:
    return pipeline[1]["data"]["work"] + "/"


def test_declared_params_exist_and_the_code_reads_them(pipeline):
    from orchestration.definitions import build_definitions
    from pipelines.classify.train import STRATEGY_DIR

    dvc, params = pipeline
    for name, stage in dvc["stages"].items():
        for entry in stage.get("params", []):
            if isinstance(entry, dict):  # {file: None}: every key of another YAML config the code reads
                assert all((ROOT / f).is_file() and Path(ROOT / f).parent in (STRATEGY_DIR, STRATEGY_DIR.parent)
                           for f in entry)
                continue
            node = params
            for part in entry.split("."):
                assert part in node, f"{name}: param {entry} missing from params.yaml"
                node = node[part]
    strategy_files = {f for s in dvc["stages"].values() for e in s.get("params", []) if isinstance(e, dict) for f in e
                      if Path(ROOT / f).parent == STRATEGY_DIR}
    assert {Path(f).stem for f in strategy_files} >= set(STRATEGIES)

    # defaults: `dvc repro` and `prodcat run` make the same run
    from pipelines.settings import settings_from

    assert stages.settings_from_params(params).with_(quiet=False) == settings_from({})
    # each value reaches the code: the settings resource the assets read
    changed = {**params, "train": {"seed": 7}, "data": {"raw": str(SAMPLE_DIR), "work": "/tmp/prodcat-x"},
               "embed": {"text_encoder": "roberta-base", "image_encoder": "vit-base"}}
    settings = stages.settings_from_params(changed)
    assert (settings.seed, settings.data_root, settings.work_dir) == (7, SAMPLE_DIR, Path("/tmp/prodcat-x"))
    resource = build_definitions(settings).resources["settings"]
    assert (resource.text_encoder, resource.image_encoder, resource.seed) == ("roberta-base", "vit-base", 7)
    assert resource.work_dir == "/tmp/prodcat-x"


def test_bad_params_fail_with_a_clear_message(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"data": {"raw": "data/sample", "work": "w"}, "embed": {"text_encoder": "minilm"},
                                   "train": {"seed": 0}}))
    with pytest.raises(ValueError, match="section 'embed' must hold exactly"):
        stages.load_params(bad)
    bad.write_text(yaml.safe_dump({"data": {"raw": "no/such/dir", "work": "w"}, "train": {"seed": 0},
                                   "embed": {"text_encoder": "minilm", "image_encoder": "efficientnet-lite0"}}))
    assert stages.main(["catalogue", "--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "data.raw" in err and "not a directory" in err


def test_catalogue_stage_writes_exactly_its_declared_outputs(pipeline, tmp_path):
    dvc, params = pipeline
    work = tmp_path / "work"
    local = {**params, "data": {"raw": str(SAMPLE_DIR), "work": str(work)}}
    summary = stages.run("catalogue", stages.settings_from_params(local), tmp_path / "dagster", log=lambda _: None)
    assert {k.split("[")[0] for k in summary if k != "__checks__"} == {"normalized_products", "reviewed_labels", "catalogue",
                                                                                  "splits"}
    declared = {out[len(dvc_work(pipeline)):] for out in _outs(dvc["stages"]["catalogue"])}
    files = [p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()]
    undeclared = [f for f in files if not any(f == d or f.startswith(d + "/") for d in declared)]
    assert files and not undeclared, f"written but not a DVC output of catalogue: {undeclared}"
    assert all((work / d).exists() for d in declared)
    assert sum(json.loads((work / "normalized" / p / "coverage.json").read_text())["rows_normalised"]
               for p in os.listdir(work / "normalized")) == summary["catalogue"]["rows"]


@pytest.mark.slow
def test_dvc_repro_and_an_experiment_in_a_clone(tmp_path):
    """A clone of the working tree: `dvc repro` builds the report, `dvc exp run -S train.seed=1` re-runs the classifiers
    stage onwards but not the embeddings and records the new seed and metrics (~10 min on the sample)."""
    assert DVC.exists(), "run `make .venv-dvc/.installed` first"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, clone / rel)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["add", "-A"], cwd=clone, check=True)
    subprocess.run(git + ["commit", "-qm", "working tree"], cwd=clone, check=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               DAGSTER_HOME=str(clone / ".dagster_home"))
    for var in ("PRODCAT_DATA", "PRODCAT_WORK", "PRODCAT_SEED", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    dvc = lambda *args: subprocess.run([str(DVC), *args], cwd=clone, env=env, check=True, capture_output=True,
                                       text=True).stdout
    dvc("repro")
    report = json.loads((clone / "work" / "sample" / "report" / "benchmark.json").read_text())
    assert {f"model_{s}" for s in STRATEGIES} <= set(report["results"])
    assert "up to date" in dvc("status").lower()
    ran = dvc("exp", "run", "-S", "train.seed=1")
    assert "Running stage 'classifiers'" in ran and "Running stage 'embeddings'" not in ran
    shown = json.loads(dvc("exp", "show", "--json"))
    # the experiment's own commit carries its params and metrics (not just the workspace row): the metrics file
    # is git-visible (.gitignore) so `dvc exp run` commits it with the experiment
    exps = [rev for row in shown for e in (row.get("experiments") or []) for rev in (e.get("revs") or [])]
    recorded = [(rev["data"]["params"]["params.yaml"]["data"]["train"]["seed"],
                 rev["data"]["metrics"]["work/sample/report/benchmark.json"]["data"]["results"]["model_early"])
                for rev in exps]
    assert recorded and all(seed == 1 and "hF1" in early["test"] for seed, early in recorded)


def test_plot_rows_share_their_fields(tmp_path):
    """DVC's renderer needs the same keys in every row; models report ECE, baselines do not."""
    (tmp_path / "benchmark.json").write_text(json.dumps({"meta": {}, "results": {
        "model_text": {"test": {"hF1": 0.9, "ECE": 0.1, "acc_L1": 0.95}, "val": {"hF1": 0.91}},
        "baseline_tfidf_svm": {"test": {"hF1": 0.8, "acc_L1": 0.9}, "val": {"hF1": 0.85}}}}))
    rows = json.loads(stages.write_scores(tmp_path).read_text())
    assert rows == [{"model": "baseline_tfidf_svm", "acc_L1": 0.9, "hF1": 0.8},
                    {"model": "model_text", "acc_L1": 0.95, "hF1": 0.9}]
