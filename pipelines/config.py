"""Paths and the one switch between the embedded sample and the full benchmark."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
TAXONOMY_PATH = Path(os.environ.get("PRODCAT_TAXONOMY", DATA / "taxonomy.yaml"))
MAPPINGS_DIR = DATA / "mappings"
SAMPLE_DIR = DATA / "sample"
BENCHMARK_DIR = (ROOT / ".." / "shared" / "benchmark").resolve()
PLATFORMS = ["myntra", "hm", "flipkart"]


def data_root() -> Path:
    """Raw exports root. PRODCAT_DATA=benchmark (or a directory) switches every command to the full data."""
    value = os.environ.get("PRODCAT_DATA", "sample")
    if value == "sample":
        return SAMPLE_DIR
    if value == "benchmark":
        return BENCHMARK_DIR
    return Path(value).resolve()


def work_dir() -> Path:
    """Where derived artefacts go (per data root so sample and benchmark never mix)."""
    root = data_root()
    name = "sample" if root == SAMPLE_DIR else ("benchmark" if root == BENCHMARK_DIR else root.name)
    return Path(os.environ.get("PRODCAT_WORK", ROOT / "work" / name))


def seed() -> int:
    """Training seed for classifiers and baselines (PRODCAT_SEED, default 0; DVC sets it from params.yaml)."""
    value = os.environ.get("PRODCAT_SEED", "0")
    if not value.strip().lstrip("-").isdigit():
        raise ValueError(f"PRODCAT_SEED must be an integer, got {value!r}")
    return int(value)
