from dagster import StaticPartitionsDefinition

from pipelines.config import PLATFORMS

platform_partitions = StaticPartitionsDefinition(PLATFORMS)
