"""Shops as Dagster dynamic partitions: a shop is a partition key of `shops`, added when the shop is registered (the
CLI's `prodcat run`/`onboard`, the UI's "add partition", or the drop sensor finding a new export folder with a
column contract) - no code change. The three benchmark shops are registered by default when their exports exist."""
from __future__ import annotations

from pathlib import Path

from dagster import DynamicPartitionsDefinition


SHOPS = "shops"
platform_partitions = DynamicPartitionsDefinition(name=SHOPS)


def known_shops(data_root: Path, shops_dir: Path) -> list[str]:
    """Shops with a column contract (<shops_dir>/<shop>.yaml, the Settings' shops_dir: data/shops/ by default) whose
    export folder exists under the data root; the benchmark shops first, in their usual order."""
    from pipelines.ingest.shops import registered_shops

    return registered_shops(data_root, shops_dir)


def register_shops(instance, shops: list[str]) -> list[str]:
    """Add the shops that are not partitions yet. -> the ones added."""
    have = set(instance.get_dynamic_partitions(SHOPS))
    new = [s for s in shops if s not in have]
    if new:
        instance.add_dynamic_partitions(SHOPS, new)
    return new


def register_shops_of(defs, instance) -> list[str]:
    """Register every shop of the definitions' data root (what a run needs before it plans its partitions)."""
    settings = defs.resources["settings"].value
    return register_shops(instance, known_shops(settings.data_root, settings.shops_dir))


def shop_keys(instance) -> list[str]:
    """The registered shops, in registration order."""
    return list(instance.get_dynamic_partitions(SHOPS))
