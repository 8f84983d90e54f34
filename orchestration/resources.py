"""The Dagster resource that carries the run's Settings (built once by the entry point) to every asset."""
from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from pipelines.settings import PATH_FIELDS, Settings


class ProdcatSettings(ConfigurableResource):
    """A `pipelines.settings.Settings` as Dagster config (strings and ints), so the UI shows and can edit it."""

    data_root: str
    work_dir: str
    seed: int = 0
    taxonomy_path: str = str(Settings.taxonomy_path)
    text_encoder: str = "minilm"
    image_encoder: str = "efficientnet-lite0"
    tracking_uri: str = ""
    threads: int = 0
    loader_workers: int = 1
    weights_cache: str = ""
    quiet: bool = False
    dask_scheduler: str = ""
    dask_workers: int = 2
    dask_shard_resources: str = ""
    fetch_images: bool = True
    shops_dir: str = str(Settings.shops_dir)
    mappings_dir: str = str(Settings.mappings_dir)

    @classmethod
    def of(cls, settings: Settings) -> "ProdcatSettings":
        return cls(**{k: (str(v) if isinstance(v, Path) else v) for k, v in settings.__dict__.items()})

    @property
    def value(self) -> Settings:
        fields = {k: getattr(self, k) for k in Settings.__dataclass_fields__}
        for k in PATH_FIELDS:
            default = Settings.__dataclass_fields__[k]
            fields[k] = Path(fields[k]) if fields[k] else (default.default_factory() if k == "weights_cache" else
                                                           default.default)
        return Settings(**fields)

    def work(self, *parts: str) -> Path:
        return self.value.work(*parts)

    def raw_dir(self, platform: str) -> Path:
        return Path(self.data_root) / platform
