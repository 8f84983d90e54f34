"""Where weights come from and what they are: a checkpoint reference resolved to a local path, and the sha256 of
its files (part of every encoder's cache key), remembered per (path, size, mtime) so other processes skip re-reading
hundreds of MB."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from pipelines.files import atomic_write_text, sha256_of_files
from pipelines.features.encoders.base import EncoderError

DEFAULT_WEIGHTS_CACHE = Path.home() / ".cache" / "prodcat"  # Settings.weights_cache's default
HASH_FILE = "weights-sha256.json"

_HASH_MEMO: dict = {}


def resolve_path(ref: str) -> str:
    """`package:pkg/sub/path` -> a file inside an installed package; a path-like ref must exist; else a hub id."""
    ref = str(ref)
    if ref.startswith("package:"):
        pkg, _, rest = ref[len("package:"):].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise EncoderError(f"weights package {pkg!r} is not installed (pip install {pkg.replace('_', '-')})")
        path = Path(list(spec.submodule_search_locations)[0]) / rest
        if not path.exists():
            raise EncoderError(f"{ref}: {path} does not exist")
        return str(path)
    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1 or ref.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise EncoderError(f"checkpoint path {path} does not exist")
    return ref  # hub id like org/name: loaders look in the local cache (offline) and fail clearly if absent


def _remember(cache_file: Path, known: dict):
    """Best effort: a read-only cache dir only costs a re-hash next time."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file, json.dumps(known))
    except OSError:
        pass


def weights_hash(path: str, cache_dir: str | Path | None = None) -> str:
    """sha256 prefix over a weight file or every file of a model folder; a hub id's identity is the id itself.
    `cache_dir` (Settings.weights_cache; default ~/.cache/prodcat) keeps the hashes across processes."""
    p = Path(path)
    if not p.exists():
        return hashlib.sha256(path.encode()).hexdigest()[:16]
    files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    stamp = json.dumps([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    stamp = hashlib.sha256(stamp.encode()).hexdigest()
    if stamp in _HASH_MEMO:
        return _HASH_MEMO[stamp]
    cache_file = Path(cache_dir or DEFAULT_WEIGHTS_CACHE) / HASH_FILE
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    if stamp not in known:
        known[stamp] = sha256_of_files(p)[:16]
        _remember(cache_file, known)
    _HASH_MEMO[stamp] = known[stamp]
    return known[stamp]
