"""Grouped, deterministic train/val/test splits: a group's split depends only on (platform, group_id)."""
from __future__ import annotations

import hashlib

import pandas as pd

DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def stable_unit(key: str) -> float:
    """A deterministic number in [0, 1) from a string (same on every machine and Python run)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def split_of(platform: str, group_id: str, fractions: dict = DEFAULT_FRACTIONS) -> str:
    u = stable_unit(f"{platform}\x00{group_id}")
    acc = 0.0
    for name, frac in fractions.items():
        acc += frac
        if u < acc:
            return name
    return list(fractions)[-1]


def assign_splits(group_ids: pd.Series, platform: str, fractions: dict = DEFAULT_FRACTIONS) -> list[str]:
    by_group = {g: split_of(platform, g, fractions) for g in set(group_ids)}
    return [by_group[g] for g in group_ids]
