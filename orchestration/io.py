"""Parquet IO manager: tables are stored explicitly as parquet files, never pickled."""
from pathlib import Path

import pandas as pd
from dagster import ConfigurableIOManager, InputContext, OutputContext

from pipelines.ingest.catalogue import read_products


class ParquetIOManager(ConfigurableIOManager):
    base_dir: str

    def _path(self, context, partition_key: str | None) -> Path:
        base = Path(self.base_dir)
        return base.joinpath(*context.asset_key.path, f"{partition_key or 'all'}.parquet")

    def handle_output(self, context: OutputContext, obj: pd.DataFrame):
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"ParquetIOManager stores DataFrames, got {type(obj).__name__} for {context.asset_key}")
        key = context.partition_key if context.has_asset_partitions else None
        path = self._path(context, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        obj.to_parquet(tmp, index=False)
        tmp.replace(path)
        context.add_output_metadata({"path": str(path), "rows": len(obj)})

    def load_input(self, context: InputContext):
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            if context.has_partition_key and len(keys) == 1:  # same-partition dependency
                return read_products(self._path(context, keys[0]))
            return {k: read_products(self._path(context, k)) for k in keys}  # fan-in: {partition: table}
        return read_products(self._path(context, None))
