"""The MLflow registry: champions land in the settings' own store, a registry error is never "no champion yet",
champion_dir is a per-version cache (issue 16, defects 4 and 5)."""
import sqlite3
import tempfile
from pathlib import Path

import pytest

from pipelines.classify.registry import (CHAMPION_ALIAS, REGISTERED_MODEL, NoChampion, RegistryError, champion_dir,
                                         champion_version, log_run, register_champion)
from pipelines.classify.train import load_model, train_classifier
from pipelines.settings import Settings
from pipelines.taxonomy.tree import load_taxonomy


@pytest.fixture(scope="module")
def tiny_model(sample_training, tmp_path_factory):
    """A real text-only classifier trained for one epoch on the sample (a registered version needs real files)."""
    t = sample_training
    out = tmp_path_factory.mktemp("tiny") / "text"
    return train_classifier("text", t["features"], t["available"], t["labels"], t["split"], load_taxonomy(), out,
                            max_epochs=1)


def registry(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def logged(res, uri: str) -> str:
    return log_run(res, {"name": "text", "modalities": ["text"]}, tracking_uri=uri)


def alias_rows(uri: str) -> list:
    with sqlite3.connect(uri[len("sqlite:///"):]) as db:
        return db.execute("SELECT alias, version FROM registered_model_aliases").fetchall()


def test_definitions_register_champions_in_their_own_work_dir(sample_work, monkeypatch):
    """Defect 4: build_definitions(settings with work_dir=tmp) registered champions in the default work dir's
    mlruns.db (the registry followed the environment, not the settings)."""
    from dagster import AssetSelection, materialize
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default_db = Path(Settings().registry_uri[len("sqlite:///"):])
    before = default_db.stat().st_mtime_ns if default_db.exists() else None
    defs, work = sample_work["defs"], sample_work["work"]
    result = materialize(list(defs.assets), selection=AssetSelection.assets("classifiers"),
                         instance=sample_work["instance"], resources=dict(defs.resources), partition_key="text")
    assert result.success
    uri = f"sqlite:///{work / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert CHAMPION_ALIAS in client.get_registered_model(REGISTERED_MODEL).aliases
    assert (work / "mlartifacts").is_dir()
    assert (default_db.stat().st_mtime_ns if default_db.exists() else None) == before


def test_no_champion_only_when_there_is_none(tiny_model, tmp_path):
    from mlflow import MlflowClient

    uri = registry(tmp_path)
    with pytest.raises(NoChampion, match="no `champion` model registered"):
        champion_version(uri)  # empty store: no registered model at all
    MlflowClient(tracking_uri=uri, registry_uri=uri).create_registered_model(REGISTERED_MODEL)
    with pytest.raises(NoChampion):
        champion_version(uri)  # registered, but nothing holds the alias
    assert register_champion(logged(tiny_model, uri), 0.5, tracking_uri=uri) is True
    assert str(champion_version(uri).version) == "1"


def test_unreadable_champion_is_an_error_not_a_promotion(tiny_model, tmp_path):
    """Defect 5: any MlflowException while reading the champion counted as "no champion yet", so a worse model was
    promoted over a champion the registry failed to return."""
    uri = registry(tmp_path)
    assert register_champion(logged(tiny_model, uri), 0.9, tracking_uri=uri) is True
    with sqlite3.connect(tmp_path / "mlruns.db") as db:  # the alias now points at a version that is not there
        db.execute("UPDATE registered_model_aliases SET version = 99")
    with pytest.raises(RegistryError, match="version 99"):
        register_champion(logged(tiny_model, uri), 0.5, tracking_uri=uri)
    assert alias_rows(uri) == [(CHAMPION_ALIAS, 99)]  # the worse model did not take the alias
    with pytest.raises(RegistryError):
        champion_version(uri)


def test_champion_dir_is_a_cache_per_version_and_leaks_no_temp_dir(tiny_model, tmp_path, monkeypatch):
    """Defect 5: champion_dir() downloaded into a fresh temporary directory on every call and never removed it."""
    uri, cache = registry(tmp_path), tmp_path / "cache"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where mkdtemp() without a dir would put a download
    register_champion(logged(tiny_model, uri), 0.5, tracking_uri=uri)
    first, again = champion_dir(uri, cache), champion_dir(uri, cache)
    assert first == again and first.parent == cache / REGISTERED_MODEL and first.name.startswith("v1-")
    assert load_model(first).hierarchy.sizes == load_model(tiny_model.model_dir).hierarchy.sizes
    register_champion(logged(tiny_model, uri), 0.6, tracking_uri=uri)
    second = champion_dir(uri, cache)
    assert second.name.startswith("v2-") and (second / "model.safetensors").exists()
    assert sorted(p.name for p in (cache / REGISTERED_MODEL).iterdir()) == sorted([first.name, second.name])
    assert list(scratch.iterdir()) == []


def test_inference_says_no_champion_only_when_there_is_none(sample_work, tiny_model, tmp_path):
    """Defect 5: inference turned every registry failure into "no champion registered"."""
    from pipelines.inference.two_stage import TwoStage

    uri = registry(tmp_path)
    settings = sample_work["settings"].with_(tracking_uri=uri)
    with pytest.raises(NoChampion, match="no `champion` model registered.*pass --model DIR"):
        TwoStage.load(settings, mode="stage2")
    register_champion(logged(tiny_model, uri), 0.9, tracking_uri=uri)
    with sqlite3.connect(tmp_path / "mlruns.db") as db:
        db.execute("UPDATE registered_model_aliases SET version = 99")
    with pytest.raises(RegistryError) as error:
        TwoStage.load(settings, mode="stage2")
    assert "no `champion` model registered" not in str(error.value) and "version 99" in str(error.value)
