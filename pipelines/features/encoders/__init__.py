"""Text, image and joint (CLIP) encoders behind one small interface, chosen by config.

    enc = load_encoder("minilm")            # a name in models/configs/encoders.yaml, or a config dict
    enc.key, enc.dim, enc.modality          # identity (name + config + weights hash + preprocessing version)
    enc.encode(items) -> float32 [n, dim]   # texts (str), or images (PIL.Image or file path); L2-normalised

Families: `hf_text` (text.py: any transformers encoder, attention-masked mean pooling), `timm_image` and
`hf_vision` (image.py: pooled backbone features), `open_clip` (clip.py: one space for both). Loading is path-based
(weights.py): a local folder/file, `package:<pkg>/<path>` for weights shipped inside an installed PyPI package, or a
hub id that must already be in the local cache (no network here). Nothing falls back to random weights: a missing,
unknown or mismatched checkpoint raises EncoderError naming the problem. To add a family, write its class (an
`Encoder` with cfg, dim, weights, modality and encode) and register it in registry.FAMILIES.
"""
from pipelines.features.encoders.base import MAX_TEXT_CHARS, PREPROCESS_VERSION, Encoder, EncoderError
from pipelines.features.encoders.image import SquarePad, open_image
from pipelines.features.encoders.registry import CONFIG_PATH, DEFAULTS, FAMILIES, encoder_config, load_encoder
from pipelines.features.encoders.threads import configure_threads, cpu_threads
from pipelines.features.encoders.weights import resolve_path, weights_hash

__all__ = ["CONFIG_PATH", "DEFAULTS", "FAMILIES", "MAX_TEXT_CHARS", "PREPROCESS_VERSION", "Encoder", "EncoderError",
           "SquarePad", "configure_threads", "cpu_threads", "encoder_config", "load_encoder", "open_image",
           "resolve_path", "weights_hash"]
