"""Where a Dagster run executes: in process, one process per step (multiprocess), or on a Dask cluster (dagster-dask).

    prodcat run --executor dask     # every stage of the main job as a run on one Dask cluster:
                                    # $PRODCAT_DASK_SCHEDULER (tcp://host:8786) or a LocalCluster started for the job

On the dask executor each step (one asset partition: a platform, a strategy, a holdout) is a task on the cluster,
and inside it the embedding assets map their shards over the same cluster (pipelines/features/sharding.py). The
multiprocess and dask executors re-import the job in other processes, so a stage runs as a *reconstructable* job:
`stage_job(executor, assets, data_root, work_dir)` rebuilds it from plain arguments wherever it is called. Both also
need a persistent DagsterInstance (DAGSTER_HOME; every host of a multi-machine cluster must see the same one, e.g.
Postgres storage) and the filesystem IO manager's work dir on storage all workers share.
"""
from __future__ import annotations

import contextlib
import os

from dagster import (AssetSelection, ConfigurableResource, Definitions, JobDefinition, define_asset_job,
                     in_process_executor, multiprocess_executor)

from pipelines.features.sharding import SCHEDULER_ENV, cluster_client, local_cluster

EXECUTORS = ("in_process", "multiprocess", "dask")
WORKERS_ENV = "PRODCAT_DASK_WORKERS"  # worker processes of the LocalCluster started when no scheduler is given
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class DaskClient(ConfigurableResource):
    """Gives pipelines a dask Client: `with dask.client() as c:` (None when no cluster is configured and the step
    is not itself running on one; then work stays in process)."""

    scheduler_address: str = ""  # default: $PRODCAT_DASK_SCHEDULER

    def client(self):
        return cluster_client(self.scheduler_address or None)


def executor_def(name: str):
    if name == "in_process":
        return in_process_executor
    if name == "multiprocess":
        return multiprocess_executor
    if name == "dask":
        from dagster_dask import dask_executor

        return dask_executor
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")


def run_config(executor: str, address: str | None = None, n_workers: int | None = None) -> dict:
    """Run config for a stage: quiet console, and the executor's own config (dagster-dask: an existing scheduler,
    else a LocalCluster per run)."""
    if executor == "multiprocess":
        return {**QUIET, "execution": {"config": {"max_concurrent": n_workers or 2}}}
    if executor == "dask":
        address = address or os.environ.get(SCHEDULER_ENV, "")
        cluster = ({"existing": {"address": address}} if address else
                   {"local": {"n_workers": n_workers or int(os.environ.get(WORKERS_ENV, 2)), "threads_per_worker": 1}})
        return {**QUIET, "execution": {"config": {"cluster": cluster}}}
    return QUIET


def stage_job(executor: str, assets: tuple, data_root: str = "", work_dir: str = "") -> JobDefinition:
    """The reconstructor: a job materialising `assets` (and their checks) with the project's definitions."""
    from orchestration.definitions import build_definitions

    defs = build_definitions(data_root=data_root, work_dir=work_dir)
    name = "stage__" + "__".join(assets)
    job = define_asset_job(name, selection=AssetSelection.assets(*assets), executor_def=executor_def(executor))
    return Definitions(assets=defs.assets, asset_checks=defs.asset_checks, resources=defs.resources,
                       jobs=[job]).resolve_job_def(name)


def reconstructable_stage(executor: str, assets, data_root: str = "", work_dir: str = ""):
    from dagster import build_reconstructable_job

    return build_reconstructable_job("orchestration.executors", "stage_job",
                                     reconstructable_args=(executor, tuple(sorted(assets)), data_root, work_dir))


def selection_names(defs, selection) -> list[str]:
    return sorted(k.to_user_string() for k in selection.resolve(defs.resolve_asset_graph()))


def run_stage_on(executor: str, defs, selection, instance, partition_key=None, address: str | None = None):
    """One stage (asset selection, one partition) as a run on `executor`; same contract as jobs.run_stage."""
    from dagster import execute_job

    paths = defs.resources["paths"]
    recon = reconstructable_stage(executor, selection_names(defs, selection), paths.data_root, paths.work_dir)
    tags = {"dagster/partition": partition_key} if partition_key else {}
    with execute_job(recon, instance, run_config=run_config(executor, address), tags=tags,
                     raise_on_error=False) as result:
        if not result.success:
            failed = [e.message for e in result.all_events if e.is_failure]
            raise RuntimeError(f"stage {selection} [{partition_key or '-'}] on {executor} failed: {failed[-3:]}")
        return result


def stage_runner(executor: str, address: str | None = None):
    """A drop-in for jobs.run_stage that runs on `executor`."""
    if executor == "in_process":
        from orchestration.jobs import run_stage

        return run_stage
    executor_def(executor)  # unknown names fail here, before any work
    return lambda defs, selection, instance, key=None: run_stage_on(executor, defs, selection, instance, key, address)


@contextlib.contextmanager
def dask_scheduler(n_workers: int | None = None):
    """The scheduler address for a whole job: $PRODCAT_DASK_SCHEDULER, else a LocalCluster of worker processes
    started now (and closed after); exported so embedding shards find the same cluster."""
    address = os.environ.get(SCHEDULER_ENV, "")
    if address:
        yield address
        return
    with local_cluster(n_workers or int(os.environ.get(WORKERS_ENV, 2)), 1) as cluster:
        os.environ[SCHEDULER_ENV] = cluster.scheduler_address
        try:
            yield cluster.scheduler_address
        finally:
            os.environ.pop(SCHEDULER_ENV, None)
