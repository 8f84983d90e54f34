"""Dagster code location for prodcat: `dagster dev -m orchestration.definitions`.

This module is an entry point: it builds the Settings once from the environment (PRODCAT_DATA, PRODCAT_WORK, ...)
and hands them to `build_definitions`; tests and the CLI call `build_definitions(settings)` with their own.
"""
from __future__ import annotations

import os

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules, map_asset_specs

from orchestration import checks
from orchestration.assets import (adaptation, catalogue, classifiers, embeddings, holdout, inference, recategorisation,
                                  review)
from orchestration.io import ParquetIOManager
from orchestration.main_job import make_main_job
from orchestration.resources import ProdcatSettings
from orchestration.schedules import raw_export_drop, weekly_retraining, with_weekly_retraining
from pipelines.settings import Settings, settings_from

ASSET_MODULES = [catalogue, review, embeddings, classifiers, holdout, adaptation, inference, recategorisation]
# the settings each asset's result depends on: folded into its code version, so changing one (a new seed, another
# encoder or taxonomy) marks exactly these assets, and what reads them, stale in the UI
SETTINGS_IN_CODE_VERSION = {
    "normalized_products": ("taxonomy_path", "shops_dir", "mappings_dir"),
    "text_embeddings": ("text_encoder",),
    "image_embeddings": ("image_encoder",),
    "baselines": ("seed", "taxonomy_path"),
    "classifiers": ("seed", "taxonomy_path"),
    "holdout_evaluations": ("seed", "taxonomy_path"),
    "holdout_fewshot": ("seed", "taxonomy_path"),
    "shop_adaptation": ("seed", "taxonomy_path", "text_encoder", "shops_dir", "mappings_dir"),
    "stage1_model": ("seed",),
}


def with_settings_in_code_versions(assets: list, settings: Settings) -> list:
    def versioned(spec):
        fields = SETTINGS_IN_CODE_VERSION.get(spec.key.to_user_string())
        if not fields:
            return spec
        return spec.replace_attributes(code_version=f"{spec.code_version}+{settings.fingerprint(*fields)}")

    return map_asset_specs(versioned, assets)


def build_definitions(settings: Settings | None = None) -> Definitions:
    """The project's definitions for one Settings (default: the embedded sample into work/sample)."""
    settings = settings or settings_from({})
    assets = with_weekly_retraining(load_assets_from_modules(ASSET_MODULES))
    return Definitions(
        assets=with_settings_in_code_versions(assets, settings),
        asset_checks=load_asset_checks_from_modules([checks, classifiers]),
        jobs=[make_main_job(build_definitions)],
        sensors=[raw_export_drop, weekly_retraining],
        resources={
            "settings": ProdcatSettings.of(settings),
            "io_manager": ParquetIOManager(base_dir=str(settings.work_dir / "assets")),
            "reviewed_labels_input": review.ReviewedLabelsInput(base_dir=str(settings.work_dir / "assets")),
        },
    )


defs = build_definitions(settings_from(os.environ))
