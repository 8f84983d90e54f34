"""The model manifest: model.json records what a classifier was trained with, and classify / serve refuse a model
whose encoders, joint heads, lexical space or taxonomy differ from the current configuration (issue 16)."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.classify.manifest import (ModelMismatch, check_compatible, expected_manifest, feature_provenance,
                                         read_manifest)
from pipelines.classify.train import train_classifier
from pipelines.settings import TAXONOMY_PATH
from pipelines.taxonomy.tree import load_taxonomy

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ["text", "lexical", "image", "joint"]


@pytest.fixture(scope="module")
def trained(sample_work, sample_training, tmp_path_factory):
    """An 'early' fusion model (every modality) trained for one epoch on the sample, with its provenance."""
    settings, t = sample_work["settings"], sample_training
    out = tmp_path_factory.mktemp("manifest") / "early"
    res = train_classifier("early", t["features"], t["available"], t["labels"], t["split"],
                           load_taxonomy(settings.taxonomy_path), out, max_epochs=1,
                           provenance=feature_provenance(settings, MODALITIES))
    return {"settings": settings, "model_dir": res.model_dir}


def other_taxonomy_version(tmp_path) -> Path:
    doc = yaml.safe_load(TAXONOMY_PATH.read_text())
    doc["version"] = int(doc.get("version", 1)) + 1
    path = tmp_path / "taxonomy.v2.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_manifest_records_encoders_dims_preprocessing_and_taxonomy(trained, sample_training):
    from pipelines.features.encoders import PREPROCESS_VERSION, load_encoder

    manifest = read_manifest(trained["model_dir"])
    settings = trained["settings"]
    taxonomy = load_taxonomy(settings.taxonomy_path)
    assert manifest["taxonomy"]["version"] == taxonomy.version and manifest["taxonomy"]["name"] == taxonomy.name
    assert manifest["dims"] == {m: sample_training["features"][m].shape[1] for m in MODALITIES}
    text = load_encoder(settings.text_encoder)
    recorded = manifest["features"]["text"]["encoders"]["text"]
    assert recorded == {"name": settings.text_encoder, "key": text.key, "weights_sha256": text.weights,
                        "preprocess_version": PREPROCESS_VERSION, "dim": text.dim}
    assert manifest["features"]["joint"]["encoders"]["image"]["name"] == settings.image_encoder
    assert len(manifest["features"]["joint"]["joint_heads_sha256"]) == 64
    assert len(manifest["features"]["lexical"]["lexical_space_sha256"]) == 64
    assert check_compatible(manifest, expected_manifest(settings, MODALITIES, load=True)) == []


def test_check_compatible_names_every_difference(trained):
    manifest = read_manifest(trained["model_dir"])
    expected = copy.deepcopy(manifest)
    expected["dims"]["text"] = 768
    expected["features"]["text"]["encoders"]["text"]["key"] = "roberta-base-0123456789ab"
    expected["taxonomy"]["version"] = 2
    problems = check_compatible(manifest, expected)
    assert len(problems) == 3, problems
    assert any("text vector width" in p and "384" in p and "768" in p for p in problems)
    assert any("text vectors: text encoder key" in p and "roberta-base-0123456789ab" in p for p in problems)
    assert any("taxonomy version" in p for p in problems)
    unrecorded = {**manifest, "features": {}}
    assert any("not recorded" in p for p in check_compatible(unrecorded, expected))
    assert "no manifest" in check_compatible(None, expected)[0]


def test_classify_refuses_a_model_trained_with_another_text_encoder(trained):
    """Before the manifest, a model trained on MiniLM vectors was fed whatever the settings' encoder produced."""
    from pipelines.inference.two_stage import TwoStage

    settings = trained["settings"].with_(text_encoder="roberta-base")
    with pytest.raises(ModelMismatch) as error:  # refused before RoBERTa is even looked for
        TwoStage.load(settings, trained["model_dir"], "stage2")
    message = str(error.value)
    assert "text vectors: text encoder name: model trained with 'minilm'" in message
    assert "'roberta-base'" in message and "joint vectors: text encoder name" in message
    assert isinstance(error.value, ValueError)  # the CLI turns it into exit code 2


def test_classify_cli_exits_2_on_another_taxonomy_version(trained, sample_work, tmp_path):
    env = {**os.environ, "PRODCAT_WORK": str(sample_work["work"]), "PRODCAT_DATA": str(sample_work["raw"]),
           "PRODCAT_TAXONOMY": str(other_taxonomy_version(tmp_path)), "PRODCAT_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "classify", "--platform", "hm", "--input",
                           str(ROOT / "data" / "sample" / "hm"), "--out", str(tmp_path / "hm.csv"), "--stage",
                           "stage2", "--model", str(trained["model_dir"]), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "does not match the current configuration" in proc.stderr
    assert "taxonomy version: model trained with 1, current configuration gives 2" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "hm.csv").exists()


def test_model_without_recorded_provenance_is_refused(sample_work, sample_training, tmp_path):
    from pipelines.inference.two_stage import TwoStage

    t = sample_training
    res = train_classifier("text", t["features"], t["available"], t["labels"], t["split"], load_taxonomy(),
                           tmp_path / "text", max_epochs=1)
    assert json.loads((res.model_dir / "model.json").read_text())["manifest"]["features"] == {}
    with pytest.raises(ModelMismatch, match="text vectors: not recorded in the model's manifest"):
        TwoStage.load(sample_work["settings"], res.model_dir, "stage2")
