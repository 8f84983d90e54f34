"""End-to-end training on the sample's real embeddings; save/load; reproducibility; MLflow champion alias."""
from collections import Counter

import numpy as np
import pytest

from pipelines.metrics import evaluate
from pipelines.taxonomy import load_taxonomy
from pipelines.train import load_model, predict, train_classifier


def majority_hf1(data, tax):
    split, labels = data["split"], data["labels"]
    top = Counter(labels[i] for i in np.flatnonzero(split == "train")).most_common(1)[0][0]
    test = [labels[i] for i in np.flatnonzero(split == "test")]
    return evaluate(test, [top] * len(test), tax)["hF1"]


@pytest.mark.parametrize("strategy", ["late", "attention"])
def test_fused_model_learns_and_every_path_is_valid(sample_training, tmp_path, strategy):
    d, tax = sample_training, load_taxonomy()
    res = train_classifier(strategy, d["features"], d["available"], d["labels"], d["split"], tax, tmp_path,
                           max_epochs=12, platforms=d["platforms"])
    assert res.test["consistency"] == 1.0
    assert res.test["hF1"] > majority_hf1(d, tax) + 0.3
    assert res.test["hF1"] > 0.75
    assert set(res.per_platform) == {"myntra", "hm", "flipkart"}
    paths, conf, prob = predict(tmp_path, d["features"], d["available"])
    assert all(tax.is_valid_path(p) and tax.is_leaf(p) for p in paths)
    assert np.nanmax(conf) <= 1 and np.nanmin(conf) >= 0


def test_image_only_model_still_returns_valid_paths_without_images(sample_training, tmp_path):
    d, tax = sample_training, load_taxonomy()
    train_classifier("image", d["features"], d["available"], d["labels"], d["split"], tax, tmp_path, max_epochs=3)
    flipkart = np.flatnonzero(d["platforms"] == "flipkart")
    assert not d["available"]["image"][flipkart].any()
    paths, _, _ = predict(tmp_path, {m: v[flipkart] for m, v in d["features"].items()},
                          {m: v[flipkart] for m, v in d["available"].items()})
    assert len(set(paths)) == 1 and tax.is_leaf(paths[0])  # no input: the learned prior, one valid path


def test_training_is_seeded_and_reproducible(sample_training, tmp_path):
    d, tax = sample_training, load_taxonomy()
    a = train_classifier("text", d["features"], d["available"], d["labels"], d["split"], tax, tmp_path / "a",
                         max_epochs=4, seed=7)
    b = train_classifier("text", d["features"], d["available"], d["labels"], d["split"], tax, tmp_path / "b",
                         max_epochs=4, seed=7)
    assert a.test["hF1"] == b.test["hF1"]
    wa, wb = load_model(tmp_path / "a").state_dict(), load_model(tmp_path / "b").state_dict()
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def test_mlflow_logging_and_champion_alias(sample_training, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from pipelines.train import REGISTERED_MODEL, champion_dir, log_run, register_champion

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv("PRODCAT_WORK", str(tmp_path / "work"))
    d, tax = sample_training, load_taxonomy()
    res = train_classifier("text", d["features"], d["available"], d["labels"], d["split"], tax, tmp_path / "m",
                           max_epochs=3)
    run = log_run(res, {"name": "text", "modalities": ["text"]}, taxonomy=tax, labels=d["labels"])
    assert register_champion(run, res.val["hF1"]) is True
    assert register_champion(run, res.val["hF1"] - 0.1) is False  # worse on validation: alias stays
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert str(client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version) == "1"
    assert "val_hF1" in client.get_run(run).data.metrics
    local = champion_dir(tmp_path / "dl")
    assert (local / "model.safetensors").exists()
    assert load_model(local).hierarchy.sizes == [4, 31, 84]
    mlflow.set_tracking_uri(None)
