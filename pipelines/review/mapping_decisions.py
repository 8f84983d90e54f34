"""Accepted mapping decisions -> rows of the shop's mapping table (data/mappings/<shop>.csv format).

    write_reviewed_mapping(store.decisions(), "acme", "data/mappings/acme.csv")

The latest decision per native category of the `mappings` queue wins, skips ignored: accepted or corrected -> its
taxonomy path; out of scope -> `unmapped` with a reason. The rows go through onboarding's accept step
(pipelines/onboard/mapping_proposal.accept_mapping_proposal), so the table is merged with the shop's other rules,
validated like every mapping table and written atomically (an invalid result leaves the file as it was).
"""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import pandas as pd

from pipelines.review.labels import REASON_REVIEWED_OUT_OF_SCOPE, latest_answers


def reviewed_mapping_rows(decisions: pd.DataFrame, shop: str) -> list[dict]:
    """The mapping-queue decisions of `shop` as mapping-table rows (native_path, category_path, unmapped_reason):
    accepted or corrected -> the path; out of scope -> unmapped with a reason."""
    latest = latest_answers(decisions[decisions["shop"] == shop], ("mappings",))
    rows = []
    for r in latest.to_dict("records"):
        if r["decision"] == "out_of_scope":
            rows.append({"native_path": r["item_id"], "category_path": "",
                         "unmapped_reason": REASON_REVIEWED_OUT_OF_SCOPE})
        else:
            rows.append({"native_path": r["item_id"], "category_path": r["path"], "unmapped_reason": ""})
    return rows


def write_reviewed_mapping(decisions: pd.DataFrame, shop: str, out_csv, taxonomy=None) -> dict:
    """Merge the reviewed mapping rows of `shop` into the mapping table `out_csv` (data/mappings/<shop>.csv
    format; other rules kept), validated and written atomically by onboarding's accept step."""
    from pipelines.onboard.mapping_proposal import MAPPING_COLUMNS, accept_mapping_proposal

    rows = reviewed_mapping_rows(decisions, shop)
    with tempfile.TemporaryDirectory() as tmp:
        proposal = Path(tmp) / "reviewed.proposed.csv"
        with proposal.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=MAPPING_COLUMNS + ["reviewed", "confidence"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(r | {"reviewed": "yes", "confidence": "1"} for r in rows)
        return accept_mapping_proposal(proposal, out_csv, reviewed_only=True, taxonomy=taxonomy)
