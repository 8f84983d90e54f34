"""The Dagster dask executor, able to run a stage over several shops (dynamic partitions).

dagster-dask hands each step's arguments to `Client.submit`, and dask walks every tuple and list argument looking
for futures to wait on. A run over a range of dynamic partitions carries a `KeyRangesPartitionsSubset` inside its
known execution state: a Dagster @record that refuses iteration, so the walk raises and the run fails before a
step starts. This executor makes the same call (dagster-dask's own `query_on_dask_worker`) with everything but
the `dependencies` futures in a box dask ships pickled without walking; steps are still ordered by those futures.
"""
from __future__ import annotations

from dagster import executor, multiple_process_executor_requirements
from dagster_dask.executor import DaskExecutor, dask_executor, get_dask_resource_requirements, query_on_dask_worker


class StepArgs:
    """Arguments dask ships as they are (pickled) instead of traversing them for futures."""

    def __init__(self, *args):
        self.args = args


def run_step_on_worker(dependencies, step_args: StepArgs):
    return query_on_dask_worker(dependencies, *step_args.args)


class PartitionSafeDaskExecutor(DaskExecutor):
    """dagster-dask's executor for the clusters prodcat configures (an existing scheduler or a LocalCluster)."""

    def _cluster(self, job_name: str):
        if self.cluster_type == "existing":
            return self.cluster_configuration["address"]
        if self.cluster_type == "local":
            from dask.distributed import LocalCluster

            return LocalCluster(**self.build_dict(job_name))
        raise ValueError(f"prodcat's dask executor runs on an 'existing' scheduler or a 'local' cluster, "
                         f"not {self.cluster_type!r}")

    def execute(self, plan_context, execution_plan):
        import dask.distributed
        from dagster._core.errors import raise_execution_interrupts
        from dagster._utils import iterate_with_context

        if not plan_context.instance.is_persistent:
            raise ValueError("dask execution requires a persistent DagsterInstance")
        job_name = plan_context.job_name
        instance_ref = plan_context.instance.get_ref()
        with dask.distributed.Client(self._cluster(job_name)) as client:
            futures: dict = {}
            for step_level in execution_plan.get_steps_to_execute_by_level():
                for step in step_level:
                    dependencies = [futures[key] for step_input in step.step_inputs
                                    for key in step_input.dependency_keys]
                    args = StepArgs(plan_context.reconstructable_job, plan_context.dagster_run,
                                    plan_context.run_config, [step.key], instance_ref, execution_plan.known_state)
                    futures[step.key] = client.submit(run_step_on_worker, dependencies, args,
                                                      key=f"{job_name}.{step.key}",
                                                      resources=get_dask_resource_requirements(step.tags))
            completed = dask.distributed.as_completed(list(futures.values()), with_results=True)
            for _, events in iterate_with_context(raise_execution_interrupts, completed):
                yield from events


@executor(name="dask", config_schema=dask_executor.config_schema, requirements=multiple_process_executor_requirements())
def partition_safe_dask_executor(init_context):
    """dagster-dask's `dask_executor` (same config: cluster: {existing: {address}} or {local: {...}})."""
    ((cluster_type, cluster_configuration),) = init_context.executor_config["cluster"].items()
    return PartitionSafeDaskExecutor(cluster_type, cluster_configuration)
