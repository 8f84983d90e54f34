"""How one stage of the main job runs: in process, one process per step (multiprocess), or on a Dask cluster.

A stage is a set of assets sharing one partitions definition, materialised for one partition key (see
orchestration/main_job.py for how the graph is cut into stages). In process it is a `dagster.materialize` call on
the definitions at hand. The multiprocess and dask executors re-import the job in other processes, so there a stage
runs as a *reconstructable* job: `stage_job(executor, assets, settings_json)` rebuilds it from plain arguments
wherever it is called. Both also need a persistent DagsterInstance (DAGSTER_HOME; every host of a multi-machine
cluster must see the same one, e.g. Postgres storage) and a work dir on storage all workers share.

    prodcat run --executor dask     # every stage as a run on one Dask cluster: the settings' dask_scheduler
                                    # (PRODCAT_DASK_SCHEDULER) or a LocalCluster started for the job
"""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from dagster import AssetSelection, DagsterInstance, materialize

from pipelines.settings import PATH_FIELDS, ROOT, Settings

EXECUTORS = ("in_process", "multiprocess", "dask")
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class StageFailed(RuntimeError):
    """A stage's run failed: names the stage, the partition and the last failure messages."""


def project_instance(home: Path) -> DagsterInstance:
    """The project's persistent instance (run history in `home`, by default .dagster_home/), so the UI shows CLI runs."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():  # fresh clone: telemetry off, one run at a time
        shutil.copy(ROOT / "orchestration" / "dagster.yaml", home / "dagster.yaml")
    return DagsterInstance.from_config(str(home))


def _raise_on_failure(result, assets, partition_key, where: str = ""):
    if not result.success:
        failed = [e.message for e in result.all_events if e.is_failure]
        raise StageFailed(f"stage {', '.join(assets)} [{partition_key or '-'}]{where} failed: {failed[-3:]}")
    return result


def run_in_process(defs, assets: tuple[str, ...], instance, partition_key: str | None = None):
    """Materialise `assets` (and their checks) for one partition key in this process."""
    from orchestration.partitions import register_shops_of

    register_shops_of(defs, instance)
    everything = list(defs.assets or []) + list(defs.asset_checks or [])
    result = materialize(everything, selection=AssetSelection.assets(*assets), instance=instance,
                         resources=dict(defs.resources or {}), partition_key=partition_key, raise_on_error=False,
                         run_config=QUIET)
    return _raise_on_failure(result, assets, partition_key)


def executor_def(name: str):
    from dagster import in_process_executor, multiprocess_executor

    if name == "in_process":
        return in_process_executor
    if name == "multiprocess":
        return multiprocess_executor
    if name == "dask":
        from orchestration.dask_executor import partition_safe_dask_executor

        return partition_safe_dask_executor
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")


def executor_run_config(executor: str, settings: Settings) -> dict:
    """Quiet console plus the executor's own config (dagster-dask: the settings' scheduler, else a LocalCluster)."""
    if executor == "multiprocess":
        return {**QUIET, "execution": {"config": {"max_concurrent": settings.dask_workers}}}
    if executor == "dask":
        cluster = ({"existing": {"address": settings.dask_scheduler}} if settings.dask_scheduler else
                   {"local": {"n_workers": settings.dask_workers, "threads_per_worker": 1}})
        return {**QUIET, "execution": {"config": {"cluster": cluster}}}
    return QUIET


def settings_json(settings: Settings) -> str:
    return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}, sort_keys=True)


def settings_of_json(text: str) -> Settings:
    values = json.loads(text)
    for k in PATH_FIELDS:
        values[k] = Path(values[k])
    return Settings(**values)


def stage_job(executor: str, assets: tuple, settings_text: str):
    """The reconstructor: a job materialising `assets` (and their checks) with the project's definitions."""
    from dagster import Definitions, define_asset_job

    from orchestration.definitions import build_definitions

    defs = build_definitions(settings_of_json(settings_text))
    name = "stage__" + "__".join(assets)
    job = define_asset_job(name, selection=AssetSelection.assets(*assets), executor_def=executor_def(executor))
    return Definitions(assets=defs.assets, asset_checks=defs.asset_checks, resources=defs.resources,
                       jobs=[job]).resolve_job_def(name)


def run_on_executor(executor: str, settings: Settings, defs, assets: tuple[str, ...], instance,
                    partition_key: str | None = None):
    """One stage as a run on `executor` (multiprocess / dask); same contract as `run_in_process`."""
    from dagster import build_reconstructable_job, execute_job

    from orchestration.partitions import register_shops_of

    register_shops_of(defs, instance)

    recon = build_reconstructable_job("orchestration.runners", "stage_job",
                                      reconstructable_args=(executor, tuple(sorted(assets)), settings_json(settings)))
    tags = {"dagster/partition": partition_key} if partition_key else {}
    with execute_job(recon, instance, run_config=executor_run_config(executor, settings), tags=tags,
                     raise_on_error=False) as result:
        return _raise_on_failure(result, assets, partition_key, f" on {executor}")


StageRunner = Callable[..., object]  # (defs, assets, instance, partition_key) -> ExecuteInProcessResult-like


def stage_runner(executor: str, settings: Settings) -> StageRunner:
    """A function running one stage on `executor`; unknown executor names fail here, before any work."""
    executor_def(executor)
    if executor == "in_process":
        return run_in_process
    return lambda defs, assets, instance, key=None: run_on_executor(executor, settings, defs, assets, instance, key)


@contextlib.contextmanager
def job_cluster(settings: Settings):
    """Settings whose dask_scheduler names a cluster for the whole job: the configured one, else a LocalCluster of
    `dask_workers` processes started now and closed after (embedding shards of every stage run on it too)."""
    if settings.dask_scheduler:
        yield settings
        return
    from orchestration.dask_preload import DASK_PRELOAD
    from pipelines.features.sharding import local_cluster

    with local_cluster(settings.dask_workers, 1, preload=DASK_PRELOAD) as cluster:
        yield settings.with_(dask_scheduler=cluster.scheduler_address)
