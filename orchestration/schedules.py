"""Automation: weekly retraining of the models and a sensor that follows new or changed raw exports.

Both start STOPPED (Dagster's default for schedules and sensors): switch them on in the UI (Automation) or with
`dagster sensor start -m orchestration.definitions weekly_retraining raw_export_drop`.
"""
import json

from dagster import (AssetKey, AssetSelection, AutomationCondition, AutomationConditionSensorDefinition,
                     DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason,
                     map_asset_specs, sensor)

from orchestration.assets.catalogue import export_fingerprint
from orchestration.partitions import known_shops, platform_partitions, register_shops, shop_keys
from orchestration.resources import ProdcatSettings

RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00 UTC
# the models and everything computed from them (report, later model-based assets join automatically)
RETRAIN = AssetSelection.assets("baselines", "classifiers").downstream()
# a changed export re-runs its normalised partition and everything downstream of it
DROP_TARGET = AssetSelection.assets("normalized_products").downstream()

# Unconditional weekly retrain (on_cron would wait for every dependency to be updated after the tick, which a
# quiet week never does). One evaluation requests all retrain assets together, so the automation daemon launches
# them as one backfill in dependency order (classifiers and baselines before the report).
weekly_retrain = (AutomationCondition.cron_tick_passed(RETRAIN_CRON).since_last_handled()
                  & ~AutomationCondition.any_deps_missing()
                  & ~AutomationCondition.in_progress()).with_label(f"weekly retrain ({RETRAIN_CRON} UTC)")


def with_weekly_retraining(assets: list) -> list:
    """The asset definitions with `weekly_retrain` set on the RETRAIN assets (asset modules stay automation-free)."""
    keys = RETRAIN.resolve(assets)
    return map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=weekly_retrain)
                           if spec.key in keys else spec, assets)


weekly_retraining = AutomationConditionSensorDefinition(
    "weekly_retraining", target=RETRAIN, default_status=DefaultSensorStatus.STOPPED,
    description=f"Retrains baselines + every classifier strategy and rebuilds the report, {RETRAIN_CRON} (UTC).")


def drop_fingerprints(settings: ProdcatSettings) -> dict:
    """{shop: export fingerprint} for every shop with a column contract whose export file is in the data root
    (a new shop folder counts too: the sensor registers it as a partition)."""
    from pipelines.ingest.shops import get_adapter

    found = {}
    for shop in known_shops(settings.value.data_root, settings.value.shops_dir):
        raw = settings.raw_dir(shop)
        if (raw / get_adapter(shop, settings.value.shops_dir).EXPORT_FILE).is_file():
            found[shop] = export_fingerprint(raw)
    return found


def drop_subset(asset_graph, platforms: list[str]):
    """The changed `normalized_products` partitions and everything downstream of them, following the partition
    mappings in topological order: hm -> text_embeddings[hm] -> joint_space -> every joint_embeddings partition (the
    alignment heads changed), every classifier strategy, ... (Dagster's bfs_filter_subsets is breadth-first, so a
    child reached through two paths of different length can miss the longer one's partitions.)"""
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset

    targets = DROP_TARGET.resolve(asset_graph)
    chosen = {AssetKey("normalized_products"): platform_partitions.subset_with_partition_keys(platforms)}
    for key in asset_graph.toposorted_asset_keys:
        parents = [p for p in asset_graph.get(key).parent_keys if p in chosen]
        if key in chosen or key not in targets or not parents:
            continue
        child_def = asset_graph.get(key).partitions_def
        if child_def is None:
            chosen[key] = None  # unpartitioned: one materialisation
            continue
        subset = child_def.empty_subset()
        for parent in parents:
            parent_def = asset_graph.get(parent).partitions_def
            subset |= (child_def.subset_with_all_partitions() if chosen[parent] is None else
                       asset_graph.get_partition_mapping(key, parent).get_downstream_partitions_for_partitions(
                           chosen[parent], parent_def, downstream_partitions_def=child_def))
        chosen[key] = subset
    return AssetGraphSubset(non_partitioned_asset_keys={k for k, s in chosen.items() if s is None},
                            partitions_subsets_by_asset_key={k: s for k, s in chosen.items() if s is not None})


def drop_backfill(asset_graph, platforms: list[str]) -> RunRequest:
    """One asset backfill of `drop_subset`. A plain RunRequest has one partition key, so it cannot span
    platform-partitioned, unpartitioned and strategy-partitioned assets; an asset backfill can (it is what the UI
    launches for such a selection, and the sensor daemon submits a request carrying an asset graph subset as one)."""
    return RunRequest.for_asset_graph_subset(drop_subset(asset_graph, platforms),
                                             tags={"prodcat/trigger": "drop:" + ",".join(platforms)})


@sensor(name="raw_export_drop", asset_selection=DROP_TARGET, minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description="Watches <data root>/<platform>/ (PRODCAT_DATA); a new or changed export (CSV bytes, image "
                    "listing) backfills that platform's normalized_products partition and everything downstream.")
def raw_export_drop(context: SensorEvaluationContext, settings: ProdcatSettings):
    from dagster import partition_loading_context

    seen = json.loads(context.cursor) if context.cursor else {}
    now = drop_fingerprints(settings)
    changed = sorted(p for p, fingerprint in now.items() if seen.get(p) != fingerprint)
    cursor = json.dumps(seen | now, sort_keys=True)  # a platform whose export vanished keeps its last fingerprint
    if not changed:
        return SensorResult(skip_reason=SkipReason(f"no new or changed export under {settings.raw_dir('')}"),
                            cursor=cursor)
    context.log.info(f"changed exports: {changed}")
    new = [s for s in now if s not in set(shop_keys(context.instance))]
    register_shops(context.instance, new)  # before planning: the backfill's partitions must exist
    with partition_loading_context(dynamic_partitions_store=context.instance):
        request = drop_backfill(context.repository_def.asset_graph, changed)
    return SensorResult(run_requests=[request], cursor=cursor)
