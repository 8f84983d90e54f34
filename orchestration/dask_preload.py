"""Dask worker preload for clusters that run Dagster steps (`dask worker --preload orchestration.dask_preload`;
`pipelines.features.sharding.local_cluster(..., preload=DASK_PRELOAD)`).

dask sizes every task result; Dagster's events (dagster-dask step results) are `@record` tuples that refuse
iteration, so dask's generic tuple sizing fails and logs a warning per step. They are small: count them flat.
This lives in the Dagster layer because it imports dagster; pipelines/ never does."""
from __future__ import annotations

DASK_PRELOAD = ["orchestration.dask_preload"]


def dask_setup(worker=None):
    import sys

    from dagster import DagsterEvent
    from dask.sizeof import sizeof

    sizeof.register(DagsterEvent)(sys.getsizeof)
