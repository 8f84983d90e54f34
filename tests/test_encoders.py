"""Encoder loading through the same path-based configs users write, on tiny random models built here, and the
shipped default weights on real sample products."""
import json

import numpy as np
import pytest
from PIL import Image

from pipelines.settings import SAMPLE_DIR
from pipelines.features.encoders import EncoderError, load_encoder


def test_roberta_loads_from_local_path_and_pools(tiny_roberta):
    enc = load_encoder({"name": "tiny-roberta", "family": "hf_text", "model": str(tiny_roberta), "max_length": 16})
    v = enc.encode(["men running shoes", "silk scarf " * 5000])  # a 55 kB text is truncated, not an error
    assert v.shape == (2, 32) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert enc.key.startswith("tiny-roberta-")


def test_vit_loads_from_local_path(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(tmp_path)
    enc = load_encoder({"name": "tiny-vit", "family": "hf_vision", "model": str(tmp_path)})
    img = Image.open(next((SAMPLE_DIR / "myntra" / "images").glob("*.jpg")))
    assert enc.encode([img, img]).shape == (2, 32)


def test_open_clip_loads_custom_architecture_and_local_checkpoint(tmp_path):
    import open_clip
    import torch

    arch = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (tmp_path / "TinyCLIP.json").write_text(json.dumps(arch))
    open_clip.add_model_config(tmp_path / "TinyCLIP.json")
    torch.save({"state_dict": open_clip.create_model("TinyCLIP").state_dict()}, tmp_path / "tiny.pt")
    enc = load_encoder({"name": "tiny-clip", "family": "open_clip", "arch": "TinyCLIP",
                        "model_config": str(tmp_path / "TinyCLIP.json"), "pretrained": str(tmp_path / "tiny.pt")})
    img = Image.open(next((SAMPLE_DIR / "hm" / "images").rglob("*.jpg")))
    assert enc.encode(["a red dress"]).shape == (1, 32) and enc.encode([img]).shape == (1, 32)
    with pytest.raises(EncoderError, match="does not exist"):
        load_encoder({"family": "open_clip", "arch": "TinyCLIP", "pretrained": str(tmp_path / "nope.pt")})


def test_bad_encoder_configs_fail_clearly(tmp_path):
    with pytest.raises(EncoderError, match="unknown encoder"):
        load_encoder("no-such-encoder")
    with pytest.raises(EncoderError, match="does not exist"):
        load_encoder({"family": "timm_image", "arch": "tf_efficientnet_lite0", "checkpoint": str(tmp_path / "x.pth")})
    import timm
    import torch

    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(EncoderError, match="does not match"):
        load_encoder({"family": "timm_image", "arch": "tf_efficientnet_lite0", "checkpoint": str(tmp_path / "resnet.pth")})
    with pytest.raises(EncoderError, match="unknown family"):
        load_encoder({"name": "x", "family": "sound"})


def _myntra_image(article_type: str, k: int = 0):
    import pandas as pd

    styles = pd.read_csv(SAMPLE_DIR / "myntra" / "styles.csv", dtype=str)
    ids = [i for i in styles[styles["articleType"] == article_type]["id"]
           if (SAMPLE_DIR / "myntra" / "images" / f"{i}.jpg").exists()]
    return Image.open(SAMPLE_DIR / "myntra" / "images" / f"{ids[k]}.jpg")


def test_shipped_weights_are_semantically_sane():
    text = load_encoder("minilm")
    run, sneak, scarf = text.encode(["men's running shoes", "sports sneakers", "silk scarf"])
    assert run @ sneak > run @ scarf + 0.2
    image = load_encoder("efficientnet-lite0")
    shoe_a, shoe_b, dress = image.encode([_myntra_image("Sports Shoes", 0), _myntra_image("Casual Shoes", 0),
                                          _myntra_image("Dresses", 0)])
    assert shoe_a @ shoe_b > shoe_a @ dress


def test_threads_and_weights_cache_are_arguments_not_environment(tmp_path, monkeypatch):
    """Settings.threads and Settings.weights_cache reach the encoder as arguments; the environment is not read."""
    import torch
    from transformers import ViTConfig, ViTModel

    from pipelines.features.encoders import configure_threads, cpu_threads

    monkeypatch.setenv("PRODCAT_THREADS", "3")  # the old variables must no longer steer anything
    monkeypatch.setenv("PRODCAT_CACHE", str(tmp_path / "from-environment"))
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert cpu_threads(0) == len(__import__("os").sched_getaffinity(0)) and cpu_threads(2) == 2
        ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64)).save_pretrained(tmp_path / "vit")
        enc = load_encoder({"name": "tiny-vit-cache", "family": "hf_vision", "model": str(tmp_path / "vit")},
                           threads=2, weights_cache=tmp_path / "cache")
        assert torch.get_num_threads() == 2
        hashes = json.loads((tmp_path / "cache" / "weights-sha256.json").read_text())
        assert enc.weights in hashes.values() and not (tmp_path / "from-environment").exists()
    finally:
        torch.set_num_threads(before)
