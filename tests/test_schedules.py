"""The drop-folder sensor requests exactly the changed platforms (plus downstream); the retrain fires weekly."""
import json
import shutil
from datetime import datetime, timedelta, timezone

import pytest
from dagster import (AssetKey, AssetMaterialization, DagsterInstance, build_sensor_context,
                     evaluate_automation_conditions)

from orchestration.definitions import build_definitions
from orchestration.schedules import DROP_TARGET, RETRAIN, raw_export_drop, weekly_retraining
from orchestration.partitions import register_shops, shop_keys
from pipelines.settings import PLATFORMS, SAMPLE_DIR, Settings

NP = AssetKey("normalized_products")


@pytest.fixture
def drop(tmp_path):
    root = tmp_path / "drop"
    shutil.copytree(SAMPLE_DIR, root)
    return root, build_definitions(Settings(data_root=str(root), work_dir=str(tmp_path / "work")))


def _tick(defs, instance, cursor=None):
    context = build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources)
    return defs.resolve_sensor_def("raw_export_drop").evaluate_tick(context)  # the daemon's path, incl. validation


def _requested(tick) -> dict:
    """{asset: sorted partitions, or None if unpartitioned} over the tick's run requests."""
    out = {}
    for request in tick.run_requests:
        subset = request.asset_graph_subset
        out |= {k.to_user_string(): None for k in subset.non_partitioned_asset_keys}
        out |= {k.to_user_string(): sorted(s.get_partition_keys())
                for k, s in subset.partitions_subsets_by_asset_key.items()}
    return out


def test_drop_sensor_requests_changed_platforms_and_downstream(drop):
    root, defs = drop
    with DagsterInstance.ephemeral() as instance:
        first = _tick(defs, instance)
        assert len(first.run_requests) == 1 and sorted(json.loads(first.cursor)) == sorted(PLATFORMS)
        asked = _requested(first)
        assert asked["normalized_products"] == sorted(PLATFORMS)
        # downstream comes from the asset graph, not a list kept here
        assert set(asked) == {k.to_user_string() for k in DROP_TARGET.resolve(defs.resolve_asset_graph())}
        assert {"catalogue", "splits", "text_embeddings", "image_embeddings", "joint_space", "joint_embeddings",
                "lexical_space", "lexical_embeddings", "baselines", "classifiers", "benchmark_report"} <= set(asked)

        second = _tick(defs, instance, first.cursor)
        assert second.run_requests == [] and "no new or changed export" in second.skip_message
        assert second.cursor == first.cursor

        with open(root / "hm" / "articles.csv", "a", encoding="utf-8") as f:
            f.write("\n")  # any byte change is a new export
        third = _requested(_tick(defs, instance, second.cursor))
        assert third["normalized_products"] == ["hm"] and third["text_embeddings"] == ["hm"]
        assert third["image_embeddings"] == ["hm"]
        # the alignment heads and lexical space are refitted, so every platform's joint/lexical vectors follow
        assert third["joint_embeddings"] == third["lexical_embeddings"] == sorted(PLATFORMS) and "catalogue" in third and "splits" in third


def test_drop_sensor_sees_image_changes_and_new_platforms(drop, tmp_path):
    root, defs = drop
    shutil.rmtree(root / "flipkart")
    with DagsterInstance.ephemeral() as instance:
        first = _tick(defs, instance)
        assert _requested(first)["normalized_products"] == ["hm", "myntra"]  # no export yet: nothing to run
        assert shop_keys(instance) == ["myntra", "hm"]  # the sensor registered the shops it found as partitions
        image = next((root / "myntra" / "images").iterdir())
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])  # truncated image = changed export
        shutil.copytree(SAMPLE_DIR / "flipkart", root / "flipkart")  # a platform arrives
        second = _tick(defs, instance, first.cursor)
        assert _requested(second)["normalized_products"] == ["flipkart", "myntra"]
        assert shop_keys(instance) == ["myntra", "hm", "flipkart"]  # the new shop is a partition now


def _materialise_everything(defs, instance):
    graph = defs.resolve_asset_graph()
    register_shops(instance, PLATFORMS)
    for key in graph.materializable_asset_keys:
        node = graph.get(key)
        keys = node.partitions_def.get_partition_keys(dynamic_partitions_store=instance) if node.partitions_def else [None]
        for partition in keys:
            instance.report_runless_asset_event(AssetMaterialization(key, partition=partition))


def test_weekly_retrain_fires_once_after_monday_3am(tmp_path):
    defs = build_definitions(Settings(data_root=str(tmp_path / "raw"), work_dir=str(tmp_path / "work")))
    sunday = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)  # 2026-03-02 is a Monday
    with DagsterInstance.ephemeral() as instance:
        _materialise_everything(defs, instance)
        cursor, requested = None, []
        for hours in [0, 14, 14.5, 15.05, 15.5, 24 * 7 + 14.9, 24 * 7 + 15.1]:  # Sun 12:00 ... next Mon 03:06
            result = evaluate_automation_conditions(defs, instance, evaluation_time=sunday + timedelta(hours=hours),
                                                    cursor=cursor)
            cursor = result.cursor
            requested.append({k.to_user_string(): result.get_num_requested(k)
                              for k in defs.resolve_asset_graph().materializable_asset_keys
                              if result.get_num_requested(k)})
        graph = defs.resolve_asset_graph()
        # the models and everything computed from them (report, routing threshold, ...), every partition
        monday = {k.to_user_string(): len(graph.get(k).partitions_def.get_partition_keys(dynamic_partitions_store=instance))
                  if graph.get(k).partitions_def else 1 for k in RETRAIN.resolve(graph)}
        assert {"classifiers": 6, "baselines": 1, "benchmark_report": 1}.items() <= monday.items()
        assert requested == [{}, {}, {}, monday, {}, {}, monday]


def test_weekly_retrain_waits_for_missing_inputs(tmp_path):
    defs = build_definitions(Settings(data_root=str(tmp_path / "raw"), work_dir=str(tmp_path / "work")))
    monday = datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc)
    with DagsterInstance.ephemeral() as instance:  # nothing materialised: no embeddings to train on
        first = evaluate_automation_conditions(defs, instance, evaluation_time=monday)
        after = evaluate_automation_conditions(defs, instance, evaluation_time=monday + timedelta(hours=2),
                                               cursor=first.cursor)
        assert after.total_requested == 0


def test_automation_is_registered_and_stopped_by_default():
    from dagster import DefaultSensorStatus

    from orchestration.definitions import defs

    for name in ("raw_export_drop", "weekly_retraining"):
        assert defs.resolve_sensor_def(name).default_status == DefaultSensorStatus.STOPPED
    assert weekly_retraining.name == "weekly_retraining"
    assert raw_export_drop.name == "raw_export_drop"


def test_retrained_model_becomes_champion_only_if_better_and_the_decision_is_in_mlflow(tmp_path):
    """What every (weekly or sensor-triggered) `classifiers` materialisation does after training."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.classify.registry import REGISTERED_MODEL, ensure_experiment, register_champion

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri))

    def trained(val_hf1: float) -> str:  # a run holding a (tiny, real) model file, as classifiers logs one
        with mlflow.start_run() as run:
            mlflow.log_metric("val_hF1", val_hf1)
            mlflow.log_dict({"weights": [val_hf1]}, "model/model.json")
        return run.info.run_id

    runs = [trained(v) for v in (0.60, 0.55, 0.60, 0.62)]
    promoted = [register_champion(r, v, tracking_uri=uri) for r, v in zip(runs, (0.60, 0.55, 0.60, 0.62))]
    assert promoted == [True, False, False, True]  # a tie is not an improvement
    client = MlflowClient(uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version) == "4"
    decisions = [client.get_model_version(REGISTERED_MODEL, str(v)).tags["champion_decision"] for v in range(1, 5)]
    assert decisions[0] == "promoted: val_hF1 0.600000, no champion yet"
    assert decisions[1] == "not promoted: val_hF1 0.550000 <= champion version 1 0.600000"
    assert decisions[2] == "not promoted: val_hF1 0.600000 <= champion version 1 0.600000"
    assert decisions[3] == "promoted: val_hF1 0.620000 > champion version 1 0.600000"
    assert [client.get_run(r).data.tags["champion_decision"] for r in runs] == decisions  # also on each run
