"""The main job: every asset of the graph, stage by stage, in an order derived from the graph itself.

The asset graph is declared once (orchestration/assets/). A Dagster run materialises one partition key, so the
graph is cut into *stages*: the assets at one topological depth that share a partitions definition. Stages run in
depth order, each once per partition key, with blocking checks. The CLI (`prodcat run`), the DVC stages (one per
asset group) and the test fixtures all take their order from `stage_plan`; `main_job` is the same driver as a
registered Dagster job, so the UI (Launchpad) runs it too.
"""

from dataclasses import dataclass
from typing import Callable

from dagster import AssetSelection, Config, OpExecutionContext, job, op

from orchestration.runners import StageRunner, run_in_process


@dataclass(frozen=True)
class Stage:
    assets: tuple[str, ...]
    partitions_def: object | None

    def partition_keys(self, instance=None) -> list[str | None]:
        if self.partitions_def is None:
            return [None]
        return list(self.partitions_def.get_partition_keys(dynamic_partitions_store=instance))

    @property
    def name(self) -> str:
        return ", ".join(self.assets)


def asset_names(defs) -> list[str]:
    graph = defs.resolve_asset_graph()
    return sorted(k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_materializable)


def check_asset_names(defs, names) -> list[str]:
    """`names` if every one is a materialisable asset of `defs`; else a ValueError naming the unknown ones."""
    known = asset_names(defs)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown asset name(s) {', '.join(unknown)}; the assets are: {', '.join(known)}")
    return list(names)


def stage_plan(defs, selection: AssetSelection | None = None) -> list[Stage]:
    """The stages of `selection` (default: every asset) in dependency order."""
    graph = defs.resolve_asset_graph()
    wanted = (selection or AssetSelection.all()).resolve(graph)
    depth: dict = {}
    groups: dict[tuple[int, int], list] = {}
    partitions: dict[int, object] = {}
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if not node.is_materializable:
            continue
        depth[key] = 1 + max((depth.get(p, -1) for p in node.parent_keys), default=-1)
        if key in wanted:
            partitions[id(node.partitions_def)] = node.partitions_def
            groups.setdefault((depth[key], id(node.partitions_def)), []).append(key.to_user_string())
    order = sorted(groups, key=lambda g: g[0])  # stable: same-depth stages keep the graph's order
    return [Stage(tuple(groups[g]), partitions[g[1]]) for g in order]


def upstream_plan(defs, names) -> list[Stage]:
    """The stages that materialise `names` and everything they depend on (test fixtures build partial worlds)."""
    return stage_plan(defs, AssetSelection.assets(*check_asset_names(defs, names)).upstream())


def _scalar_metadata(materialization) -> dict:
    return {k: v.value for k, v in materialization.metadata.items()
            if isinstance(v.value, (int, float, str)) and k != "path" and "\n" not in str(v.value)
            and len(str(v.value)) < 300}


def run_plan(defs, plan: list[Stage], instance, run: StageRunner = run_in_process,
             progress: Callable | None = None, log: Callable[[str], None] = print) -> dict:
    """Run every stage of `plan` for each of its partition keys. -> {asset[partition]: scalar metadata}, plus
    '__checks__': [(check, partition, passed, severity, metadata)] for the run summary.
    `progress(total, desc)` returns a bar with update()/close() (tqdm-like) or None for none."""
    from orchestration.partitions import register_shops_of

    register_shops_of(defs, instance)  # shops are dynamic partitions: the data root's shops, before planning keys
    summary: dict = {"__checks__": []}
    for stage in plan:
        keys = stage.partition_keys(instance)
        bar = progress(len(keys), stage.name) if progress else None
        for key in keys:
            result = run(defs, stage.assets, instance, key)
            for event in result.get_asset_materialization_events():
                m = event.materialization
                name = m.asset_key.to_user_string() + (f"[{m.partition}]" if m.partition else "")
                summary[name] = _scalar_metadata(m)
            for check in result.get_asset_check_evaluations():
                summary["__checks__"].append((check.check_name, key, check.passed, check.severity.value,
                                              {k: v.value for k, v in check.metadata.items()}))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if not progress:
            log(f"stage done: {stage.name} ({len(keys)} partition(s))")
    return summary


class MainJobConfig(Config):
    only: str = ""  # comma-separated asset names: run just those (in graph order); empty: every asset


def make_main_job(build_definitions: Callable):
    """The main job as a registered Dagster job. Its one op rebuilds the definitions from the settings resource and
    drives `run_plan` on the same instance, so each stage appears in the UI as a run of its own, with lineage."""

    @op(required_resource_keys={"settings"}, description="Runs every stage of the asset graph in dependency order.")
    def run_every_stage(context: OpExecutionContext, config: MainJobConfig) -> None:
        defs = build_definitions(context.resources.settings.value)
        names = [n for n in config.only.split(",") if n.strip()]
        plan = stage_plan(defs, AssetSelection.assets(*check_asset_names(defs, names)) if names else None)
        summary = run_plan(defs, plan, context.instance, log=context.log.info)
        context.log.info(f"main job: {len(summary) - 1} materialisations, "
                         f"{sum(not c[2] for c in summary['__checks__'])} failed checks")

    @job(name="main_job", description="Every asset of the prodcat graph, stage by stage (graph order).")
    def main_job():
        run_every_stage()

    return main_job
