"""Dagster code location for prodcat: `dagster dev -m orchestration.definitions`.

This module is an entry point: it builds the Settings once from the environment (PRODCAT_DATA, PRODCAT_WORK, ...)
and hands them to `build_definitions`; tests and the CLI call `build_definitions(settings)` with their own.
"""
from __future__ import annotations

import os

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from orchestration import checks
from orchestration.assets import catalogue, classifiers, embeddings, holdout, inference, recategorisation
from orchestration.executors import DaskClient
from orchestration.io import ParquetIOManager
from orchestration.resources import ProdcatSettings
from orchestration.schedules import raw_export_drop, weekly_retraining, with_weekly_retraining
from pipelines.settings import Settings, settings_from

ASSET_MODULES = [catalogue, embeddings, classifiers, holdout, inference, recategorisation]


def build_definitions(settings: Settings | None = None) -> Definitions:
    """The project's definitions for one Settings (defaults: the embedded sample, work/sample)."""
    settings = settings or settings_from({})
    assets = with_weekly_retraining(load_assets_from_modules(ASSET_MODULES))
    return Definitions(
        assets=assets,
        asset_checks=load_asset_checks_from_modules([checks, classifiers]),
        sensors=[raw_export_drop, weekly_retraining],
        resources={
            "settings": ProdcatSettings.of(settings),
            "dask": DaskClient(scheduler_address=settings.dask_scheduler),
            "io_manager": ParquetIOManager(base_dir=str(settings.work_dir / "assets")),
        },
    )


defs = build_definitions(settings_from(os.environ))
