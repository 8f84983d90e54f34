import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored():
    """`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI into os.environ (so that subprocesses inherit it):
    a test that points mlflow at its own, later stopped, server must not send the next tests' CLI subprocesses there."""
    import sys

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def sample_work(tmp_path_factory):
    """The sample materialised through Dagster up to the joint and lexical embeddings, once per test session, in the
    stage order the main job derives from the asset graph."""
    from dagster import DagsterInstance

    from orchestration.definitions import build_definitions
    from orchestration.main_job import run_plan, upstream_plan
    from pipelines.settings import SAMPLE_DIR, Settings

    root = tmp_path_factory.mktemp("sample")
    shutil.copytree(SAMPLE_DIR, root / "raw")
    settings = Settings(data_root=root / "raw", work_dir=root / "work", quiet=True)
    defs = build_definitions(settings)
    instance = DagsterInstance.ephemeral()
    run_plan(defs, upstream_plan(defs, ["joint_embeddings", "lexical_embeddings"]), instance, log=lambda _: None)
    return {"defs": defs, "instance": instance, "work": root / "work", "raw": root / "raw", "settings": settings}


@pytest.fixture(scope="session")
def sample_training(sample_work):
    import pandas as pd

    from pipelines.classify.benchmark import training_data
    from pipelines.ingest.catalogue import read_products
    from pipelines.settings import PLATFORMS

    work = sample_work["work"]
    catalogue = read_products(work / "assets" / "catalogue" / "all.parquet")
    manifests = {m: {p: pd.read_parquet(work / "assets" / f"{m}_embeddings" / f"{p}.parquet") for p in PLATFORMS}
                 for m in ("text", "image", "joint", "lexical")}
    features, available, labels, split, platforms = training_data(catalogue, manifests, work)
    return {"catalogue": catalogue, "features": features, "available": available, "labels": labels,
            "split": split, "platforms": platforms}


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    d = tmp_path_factory.mktemp("roberta")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["men running shoes sports sneakers silk scarf cotton shirt"] * 20, vocab_size=300,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                               pad_token="<pad>", mask_token="<mask>")
    tok.save_pretrained(d)
    cfg = RobertaConfig(vocab_size=tok.vocab_size + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=80, pad_token_id=tok.pad_token_id)
    RobertaModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def two_stage_models(sample_work, sample_training):
    """A small stage-1 (lexical) model, calibrated, and a small stage-2 model ('early' fusion, its manifest
    recording the encoders, joint heads and lexical space) with the routing threshold between them, trained on the
    sample in the session's work dir (issue 7)."""
    from pipelines.classify.manifest import feature_provenance
    from pipelines.classify.train import strategy_config, train_classifier
    from pipelines.inference.features import embedding_texts
    from pipelines.inference.routing import fit_routing
    from pipelines.inference.stage1 import train_stage1
    from pipelines.taxonomy.tree import load_taxonomy

    work, settings, t = sample_work["work"], sample_work["settings"], sample_training
    taxonomy = load_taxonomy(settings.taxonomy_path)
    stage1 = train_stage1(t["features"], t["available"], t["labels"], t["split"], taxonomy, settings, max_epochs=6)
    stage2 = train_classifier("early", t["features"], t["available"], t["labels"], t["split"], taxonomy,
                              work / "models" / "test_stage2", max_epochs=4,
                              provenance=feature_provenance(settings, strategy_config("early")["modalities"]))
    cat = t["catalogue"]
    routing = fit_routing(stage1["model_dir"], stage2.model_dir, t["features"], t["available"], t["labels"],
                          t["split"], settings, measure_items=32,
                          texts=embedding_texts(cat["title"], cat["description"]),
                          image_paths=cat["image_path"].tolist())
    return {"work": work, "raw": sample_work["raw"], "settings": settings, "stage1": stage1,
            "stage2_dir": stage2.model_dir, "routing": routing}
