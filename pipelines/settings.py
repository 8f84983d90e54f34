"""One settings object for a run, built once at the entry point and passed down as an argument.

Entry points (the `prodcat` CLI, the DVC stages, the Dagster definitions) call `settings_from(...)` with their
flags, `params.yaml` values and the environment mapping; everything below them receives a `Settings` and never
reads or writes `os.environ`. A changed seed or encoder is therefore part of what the code was called with, and the
Dagster layer folds `Settings.fingerprint(...)` into code versions so the change shows up in lineage.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
TAXONOMY_PATH = DATA / "taxonomy.yaml"
MAPPINGS_DIR = DATA / "mappings"
SAMPLE_DIR = DATA / "sample"
BENCHMARK_DIR = (ROOT / ".." / "shared" / "benchmark").resolve()
PLATFORMS = ["myntra", "hm", "flipkart"]

# environment variable -> Settings field, read only by `settings_from` (the entry points' single door)
ENVIRONMENT = {
    "PRODCAT_DATA": "data_root", "PRODCAT_WORK": "work_dir", "PRODCAT_SEED": "seed",
    "PRODCAT_TAXONOMY": "taxonomy_path", "PRODCAT_TEXT_ENCODER": "text_encoder",
    "PRODCAT_IMAGE_ENCODER": "image_encoder", "MLFLOW_TRACKING_URI": "tracking_uri", "PRODCAT_THREADS": "threads",
    "PRODCAT_LOADER_WORKERS": "loader_workers", "PRODCAT_CACHE": "weights_cache",
    "PRODCAT_DASK_SCHEDULER": "dask_scheduler", "PRODCAT_DASK_WORKERS": "dask_workers",
    "PRODCAT_DASK_SHARD_RESOURCES": "dask_shard_resources", "PRODCAT_QUIET": "quiet",
    "PRODCAT_FETCH_IMAGES": "fetch_images", "PRODCAT_SHOPS": "shops_dir", "PRODCAT_MAPPINGS": "mappings_dir",
}
INT_FIELDS = {"seed", "threads", "loader_workers", "dask_workers"}
PATH_FIELDS = ("data_root", "work_dir", "taxonomy_path", "weights_cache", "shops_dir", "mappings_dir")


@dataclass(frozen=True)
class Settings:
    """Everything a run is configured by. Paths are absolute; `threads=0` means the cores this process may use."""

    data_root: Path = SAMPLE_DIR
    work_dir: Path = ROOT / "work" / "sample"
    seed: int = 0
    taxonomy_path: Path = TAXONOMY_PATH
    text_encoder: str = "minilm"
    image_encoder: str = "efficientnet-lite0"
    tracking_uri: str = ""  # empty: sqlite:///<work_dir>/mlruns.db
    threads: int = 0
    loader_workers: int = 1
    weights_cache: Path = field(default_factory=lambda: Path.home() / ".cache" / "prodcat")
    quiet: bool = False
    dask_scheduler: str = ""
    dask_workers: int = 2
    dask_shard_resources: str = ""
    fetch_images: bool = True  # http(s) image links of feeds are downloaded (once, bounded); False: never
    shops_dir: Path = DATA / "shops"  # column contracts <shop>.yaml: a shop with one and an export is a partition
    mappings_dir: Path = MAPPINGS_DIR  # native category -> taxonomy tables <shop>.csv

    def __post_init__(self):
        for name in PATH_FIELDS:  # accept str paths too
            object.__setattr__(self, name, Path(getattr(self, name)))

    @property
    def registry_uri(self) -> str:
        """MLflow tracking + registry URI: the explicit one, else the work dir's own sqlite file."""
        return self.tracking_uri or f"sqlite:///{self.work_dir / 'mlruns.db'}"

    def work(self, *parts: str) -> Path:
        """A directory under the work dir, created on first use."""
        path = self.work_dir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def raw_dir(self, platform: str) -> Path:
        return self.data_root / platform

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    def fingerprint(self, *names: str) -> str:
        """Short hash of the named fields (all when none): what a code version must change with."""
        values = {k: str(v) for k, v in sorted(asdict(self).items()) if not names or k in names}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def resolve_data_root(value: str | Path | None) -> Path:
    """'sample' (default), 'benchmark' or a directory of raw exports."""
    value = str(value or "sample")
    if value == "sample":
        return SAMPLE_DIR
    if value == "benchmark":
        return BENCHMARK_DIR
    return Path(value).expanduser().resolve()


def default_work_dir(data_root: Path) -> Path:
    """work/<sample|benchmark|name of the data dir>/, so the sample's and the benchmark's artefacts never mix."""
    name = "sample" if data_root == SAMPLE_DIR else ("benchmark" if data_root == BENCHMARK_DIR else data_root.name)
    return ROOT / "work" / name


def _coerce(name: str, value):
    if name in INT_FIELDS:
        text = str(value).strip()
        if not text.lstrip("-").isdigit():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(text)
    if name in ("quiet", "fetch_images"):
        return str(value).strip().lower() in ("1", "true", "yes", "on") if not isinstance(value, bool) else value
    if name in PATH_FIELDS and name != "data_root":
        return Path(value).expanduser().resolve()
    return value


def settings_from(environ: Mapping[str, str] | None = None, **flags) -> Settings:
    """Settings from (lowest to highest precedence) the defaults, the environment mapping, then explicit flags
    (CLI options, params.yaml values). Flags that are None or '' are not given. Called by entry points only."""
    given: dict = {}
    for var, name in ENVIRONMENT.items():
        if environ and environ.get(var, "") != "":
            given[name] = environ[var]
    given.update({k: v for k, v in flags.items() if v is not None and v != ""})
    unknown = set(given) - set(Settings.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    data_root = resolve_data_root(given.pop("data_root", None))
    values = {k: _coerce(k, v) for k, v in given.items()}
    values.setdefault("work_dir", default_work_dir(data_root))
    return Settings(data_root=data_root, **values)
