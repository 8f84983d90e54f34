"""The main job: materialise every asset on the current data root, partition by partition, and summarise."""
from __future__ import annotations

import os
import shutil

from dagster import AssetSelection, DagsterInstance, materialize

from pipelines import settings as config


def project_instance() -> DagsterInstance:
    """Run history lives in the project (DAGSTER_HOME, default .dagster_home/) so the UI shows CLI runs too."""
    home = os.environ.setdefault("DAGSTER_HOME", str(config.ROOT / ".dagster_home"))
    os.makedirs(home, exist_ok=True)
    if not os.path.exists(os.path.join(home, "dagster.yaml")):  # fresh clone: telemetry off, one run at a time
        shutil.copy(config.ROOT / "orchestration" / "dagster.yaml", os.path.join(home, "dagster.yaml"))
    return DagsterInstance.get()


def _definitions_parts(defs):
    graph_assets = list(defs.assets or [])
    return graph_assets + list(defs.asset_checks or []), dict(defs.resources or {})


def run_stage(defs, selection, instance, partition_key=None):
    assets, resources = _definitions_parts(defs)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = materialize(assets, selection=selection, instance=instance, resources=resources,
                         partition_key=partition_key, raise_on_error=False, run_config=quiet)
    if not result.success:
        failed = [e.message for e in result.all_events if e.is_failure]
        raise RuntimeError(f"stage {selection} [{partition_key or '-'}] failed: {failed[-3:]}")
    return result


def recategorisation_nodes() -> list[str]:
    from orchestration.assets.recategorisation import shallow_node_partitions

    return shallow_node_partitions.get_partition_keys()


def main_job_stages():
    """(selection, partition keys) in dependency order; later issues append their stages here."""
    from orchestration.partitions import platform_partitions

    from orchestration.assets.classifiers import strategy_partitions
    from orchestration.assets.holdout import holdout_partitions

    platforms = platform_partitions.get_partition_keys()
    strategies = strategy_partitions.get_partition_keys()
    return [
        (AssetSelection.assets("normalized_products"), platforms),
        (AssetSelection.assets("catalogue", "splits"), [None]),
        (AssetSelection.assets("text_embeddings", "image_embeddings"), platforms),
        (AssetSelection.assets("joint_space"), [None]),
        (AssetSelection.assets("joint_embeddings"), platforms),
        (AssetSelection.assets("lexical_space"), [None]),
        (AssetSelection.assets("lexical_embeddings"), platforms),
        (AssetSelection.assets("baselines"), [None]),
        (AssetSelection.assets("classifiers"), strategies),
        (AssetSelection.assets("benchmark_report"), [None]),
        (AssetSelection.assets("holdout_training_set", "holdout_fewshot"), platforms),
        (AssetSelection.assets("holdout_evaluations"), holdout_partitions.get_partition_keys()),
        (AssetSelection.assets("holdout_report"), [None]),
        (AssetSelection.assets("stage1_model"), [None]),
        (AssetSelection.assets("routing_threshold"), [None]),
        (AssetSelection.assets("recategorisation_clusters"), recategorisation_nodes()),
        (AssetSelection.assets("recategorisation_report"), [None]),
    ]


def stage_assets(defs, selection) -> set[str]:
    return {key.to_user_string() for key in selection.resolve(defs.resolve_asset_graph())}


def run_main(defs=None, instance=None, log=print, only: set[str] | None = None, executor: str = "in_process") -> dict:
    """Every stage of the main job, or with `only` (asset names) the stages selecting only those assets (DVC).
    `executor`: in_process | multiprocess | dask (orchestration/executors.py)."""
    from orchestration.definitions import defs as default_defs
    from orchestration.executors import SCHEDULER_ENV, dask_scheduler, stage_runner

    if executor == "dask" and not os.environ.get(SCHEDULER_ENV):
        with dask_scheduler():  # one LocalCluster for every stage of the job
            return run_main(defs, instance, log, only, executor)
    run = stage_runner(executor)
    defs = defs or default_defs
    instance = instance or project_instance()
    summary = {}
    for selection, keys in main_job_stages():
        if only is not None and not stage_assets(defs, selection) <= only:
            continue
        for key in keys:
            result = run(defs, selection, instance, key)
            for mat in result.get_asset_materialization_events():
                m = mat.materialization
                name = m.asset_key.to_user_string() + (f"[{m.partition}]" if m.partition else "")
                summary[name] = {k: v.value for k, v in m.metadata.items() if isinstance(v.value, (int, float, str))
                                 and k != "path" and "\n" not in str(v.value) and len(str(v.value)) < 300}
                log(f"materialised {name}: " + ", ".join(f"{k}={v}" for k, v in summary[name].items()))
            for check in result.get_asset_check_evaluations():
                log(f"  check {check.check_name}[{key or '-'}]: {'passed' if check.passed else 'FAILED'}")
    return summary
