from dagster import StaticPartitionsDefinition

from pipelines.settings import PLATFORMS

platform_partitions = StaticPartitionsDefinition(PLATFORMS)
