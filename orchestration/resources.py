from pathlib import Path

from dagster import ConfigurableResource

from pipelines import config


class ProdcatPaths(ConfigurableResource):
    """Where raw exports are read from and derived artefacts written to (defaults follow PRODCAT_DATA/PRODCAT_WORK)."""

    data_root: str = ""
    work_dir: str = ""

    def raw_dir(self, platform: str) -> Path:
        return Path(self.data_root or config.data_root()) / platform

    def work(self, *parts: str) -> Path:
        path = Path(self.work_dir or config.work_dir()).joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path
