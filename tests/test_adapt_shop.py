"""The adapted classifier of a new shop as a step of the graph and as what the CLI answers with (issue 18): the
per-shop `shop_adaptation` asset adapts to a shop without a hand mapping, and `prodcat classify --shop` then loads
that very model. Real sample exports, real (small) models."""
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from dagster import DagsterInstance

from pipelines.settings import DATA, MAPPINGS_DIR, SAMPLE_DIR, Settings


@pytest.fixture(scope="module")
def new_shop(tmp_path_factory):
    """hm and myntra labelled; 'acme' = Flipkart's sample export under a new name with a contract and no mapping."""
    root = tmp_path_factory.mktemp("newshop")
    raw, shops, mappings = root / "raw", root / "shops", root / "mappings"
    shops.mkdir()
    mappings.mkdir()
    for shop in ("hm", "myntra"):
        shutil.copytree(SAMPLE_DIR / shop, raw / shop)
        shutil.copy(DATA / "shops" / f"{shop}.yaml", shops / f"{shop}.yaml")
        shutil.copy(MAPPINGS_DIR / f"{shop}.csv", mappings / f"{shop}.csv")
    shutil.copytree(SAMPLE_DIR / "flipkart", raw / "acme")
    contract = (DATA / "shops" / "flipkart.yaml").read_text()
    assert "shop: flipkart" in contract
    (shops / "acme.yaml").write_text(contract.replace("shop: flipkart", "shop: acme"))
    settings = Settings(data_root=raw, work_dir=root / "work", shops_dir=shops, mappings_dir=mappings, quiet=True,
                        threads=1)
    return {"root": root, "raw": raw, "settings": settings}


def test_labelled_shops_are_those_with_a_mapping(new_shop):
    from pipelines.adapt.onboarding import labelled_shops

    assert labelled_shops(new_shop["settings"]) == ["myntra", "hm"]


def test_shop_adaptation_asset_adapts_a_new_shop_and_classify_uses_it(new_shop):
    from orchestration.definitions import build_definitions
    from orchestration.runners import run_in_process
    from pipelines.adapt.store import adapted_meta

    settings = new_shop["settings"]
    defs = build_definitions(settings)
    run_in_process(defs, ("shop_adaptation",), DagsterInstance.ephemeral(), "acme")
    saved = settings.work("adapt", "acme")
    meta = adapted_meta(saved)
    assert not (settings.work_dir / "store").exists()  # the embedding assets' store is not adaptation's to change
    assert any((settings.work_dir / "adapt" / ".store").iterdir())
    assert meta["info"]["new_shop"] == "acme" and meta["info"]["training_shops"] == ["hm", "myntra"]
    assert meta["info"]["pseudo_labels"]["products"] > 0  # its unlabelled products were trained on
    table = pd.read_parquet(settings.work_dir / "assets" / "shop_adaptation" / "acme.parquet")
    assert json.loads(table["test"].iloc[0]) == {}  # no hand mapping: nothing scored, nothing read
    trained = sorted(p.stat().st_mtime_ns for p in (saved / "training").rglob("model.safetensors"))

    out = new_shop["root"] / "preds.csv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODCAT_")} | {
        "PRODCAT_DATA": str(new_shop["raw"]), "PRODCAT_WORK": str(settings.work_dir), "PRODCAT_THREADS": "1",
        "PRODCAT_SHOPS": str(settings.shops_dir), "PRODCAT_MAPPINGS": str(settings.mappings_dir)}
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "classify", "--shop", "acme", "--input",
                           str(new_shop["raw"] / "acme"), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["mode"] == "adapted"
    assert summary["rows_in"] == summary["classified"] + summary["quarantined"] and summary["classified"] > 0
    preds = pd.read_csv(out)
    assert len(preds) == summary["classified"] and preds["category_path"].notna().any()
    # the saved model answered: nothing was trained again
    assert sorted(p.stat().st_mtime_ns for p in (saved / "training").rglob("model.safetensors")) == trained


def test_adaptation_of_a_benchmark_shop_is_scored_only_against_its_mapping(new_shop, tmp_path):
    """A shop with a hand mapping adapted to as if new (leave-one-platform-out): the asset's work scores it."""
    from pipelines.adapt.adapted import AdaptConfig
    from pipelines.adapt.onboarding import adapt_registered_shop

    summary = adapt_registered_shop("hm", new_shop["settings"], cfg=AdaptConfig(augment_titles=False, fusion="late", self_train_rounds=1),
                                    modalities=("lexical",), max_epochs=3, out_dir=tmp_path / "hm")
    assert summary["training_shops"] == ["myntra"]
    assert summary["test"]["n"] > 0 and 0.0 < summary["test"]["hF1"] <= 1.0


def test_classify_refuses_an_unknown_shop_before_adapting_or_making_a_folder(new_shop, monkeypatch, capsys):
    from orchestration.cli import main

    settings = new_shop["settings"]
    for key, value in {"PRODCAT_DATA": new_shop["raw"], "PRODCAT_WORK": settings.work_dir,
                       "PRODCAT_SHOPS": settings.shops_dir, "PRODCAT_MAPPINGS": settings.mappings_dir}.items():
        monkeypatch.setenv(key, str(value))
    out = new_shop["root"] / "unknown.csv"
    assert main(["classify", "--shop", "nosuch", "--input", str(new_shop["raw"] / "acme"), "--out", str(out)]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert not (settings.work_dir / "adapt" / "nosuch").exists() and not out.exists()
