"""Dagster code location for prodcat: `dagster dev -m orchestration.definitions`."""
from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from orchestration import checks
from orchestration.assets import catalogue, classifiers, embeddings, holdout
from orchestration.assets import inference
from orchestration.assets import recategorisation
from orchestration.assets.embeddings import EncoderChoice
from orchestration.executors import DaskClient
from orchestration.io import ParquetIOManager
from orchestration.resources import ProdcatPaths
from orchestration.schedules import raw_export_drop, weekly_retraining, with_weekly_retraining

ASSET_MODULES = [catalogue, embeddings, classifiers, holdout, inference, recategorisation]


def build_definitions(data_root: str = "", work_dir: str = "") -> Definitions:
    """Definitions with explicit paths (tests point these at temp dirs); defaults follow PRODCAT_DATA/PRODCAT_WORK."""
    assets = with_weekly_retraining(load_assets_from_modules(ASSET_MODULES))
    return Definitions(
        assets=assets,
        asset_checks=load_asset_checks_from_modules([checks, classifiers]),
        sensors=[raw_export_drop, weekly_retraining],
        resources={
            "paths": ProdcatPaths(data_root=data_root, work_dir=work_dir),
            "encoders": EncoderChoice(),
            "dask": DaskClient(),  # a dask Client for pipelines (orchestration/executors.py)
            "io_manager": ParquetIOManager(base_dir=f"{work_dir}/assets" if work_dir else ""),
        },
    )


defs = build_definitions()
