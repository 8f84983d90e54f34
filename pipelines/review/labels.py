"""Reviewers' decisions flow back: reviewed products become labels of their shop (accepted mappings become rows of
its mapping table in mapping_decisions.py).

    reviewed = reviewed_labels(store.decisions())          # platform, product_id, category_path, out_of_scope, ...
    result = apply_reviewed_labels(catalogue, reviewed)    # result.products (labels replaced), result.unmapped

The latest decision per product wins (a reviewer correcting an earlier answer, or a second reviewer overruling the
first); skips say nothing and are ignored. The two product queues (needs_review, label_first) are one source of
product labels: the same product decided in both takes its latest decision. A product reviewed out of scope leaves
the training catalogue as unmapped with a reason, exactly as a mapping table's `unmapped` rule would send it.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

PRODUCT_QUEUES = ("needs_review", "label_first")
REVIEWED_COLUMNS = ["platform", "product_id", "category_path", "out_of_scope", "reviewer", "model_version"]
REASON_REVIEWED_OUT_OF_SCOPE = "out of scope: reviewed"


def latest_answers(decisions: pd.DataFrame, queues) -> pd.DataFrame:
    """The latest non-skip decision per (shop, item) of `queues`."""
    rows = decisions[decisions["queue"].isin(queues) & (decisions["decision"] != "skip")]
    return rows.sort_values("id", kind="stable").drop_duplicates(["shop", "item_id"], keep="last")


def reviewed_labels(decisions: pd.DataFrame) -> pd.DataFrame:
    """REVIEWED_COLUMNS, one row per reviewed product (category_path a list of levels as in the catalogue, empty
    when out of scope)."""
    from pipelines.taxonomy.tree import parse_path

    latest = latest_answers(decisions, PRODUCT_QUEUES)
    out = pd.DataFrame({"platform": latest["shop"].astype(str), "product_id": latest["item_id"].astype(str),
                        "category_path": [list(parse_path(p or "")) for p in latest["path"]],
                        "out_of_scope": latest["decision"].eq("out_of_scope"),
                        "reviewer": latest["reviewer"].astype(str),
                        "model_version": latest["model_version"].fillna("").astype(str)}, columns=REVIEWED_COLUMNS)
    return out.sort_values(["platform", "product_id"]).reset_index(drop=True)


@dataclass
class ReviewedCatalogue:
    products: pd.DataFrame  # the catalogue with reviewed labels (out-of-scope products removed)
    unmapped: pd.DataFrame  # uid, platform, product_id, reason: products reviewed out of scope
    relabelled: int  # catalogue products whose label the review changed
    confirmed: int  # catalogue products whose label the review confirmed
    not_in_catalogue: int  # reviewed products the catalogue does not hold (quarantined, or a shop not trained on)


def apply_reviewed_labels(catalogue: pd.DataFrame, reviewed: pd.DataFrame) -> ReviewedCatalogue:
    """The catalogue with each reviewed product's label replaced by the reviewer's path (list of levels, as the
    catalogue holds them); products reviewed out of scope moved to `unmapped` with a reason."""
    from pipelines.taxonomy.tree import parse_path

    keys = catalogue["platform"].astype(str) + "\x1f" + catalogue["product_id"].astype(str)
    answers = {f"{r['platform']}\x1f{r['product_id']}": r for r in reviewed.to_dict("records")}
    products = catalogue.copy()
    labels, drop, relabelled, confirmed = list(products["category_path"]), [], 0, 0
    for i, key in enumerate(keys):
        answer = answers.get(key)
        if answer is None:
            continue
        if answer["out_of_scope"]:
            drop.append(i)
            continue
        path = answer["category_path"]
        new = list(parse_path(path)) if isinstance(path, str) else [str(level) for level in path]
        relabelled, confirmed = relabelled + (new != list(labels[i])), confirmed + (new == list(labels[i]))
        labels[i] = new
    products["category_path"] = labels
    gone = products.iloc[drop]
    unmapped = pd.DataFrame({"uid": gone.get("uid", keys.iloc[drop]), "platform": gone["platform"],
                             "product_id": gone["product_id"], "reason": f"unmapped: {REASON_REVIEWED_OUT_OF_SCOPE}"})
    kept = products.drop(index=products.index[drop]).reset_index(drop=True)
    return ReviewedCatalogue(kept, unmapped.reset_index(drop=True), relabelled, confirmed,
                             len(set(answers) - set(keys)))


def review_accuracy_by_version(decisions: pd.DataFrame) -> pd.DataFrame:
    """How often reviewers agreed with each model version on the products they reviewed (latest answer per product
    and version; accept = right, correct = wrong, out of scope counted apart): model_version, reviewed, accepted,
    corrected, out_of_scope, accuracy. The figure a report follows from version to version."""
    rows = decisions[decisions["queue"].isin(PRODUCT_QUEUES) & (decisions["decision"] != "skip")]
    rows = rows.sort_values("id", kind="stable").drop_duplicates(["model_version", "shop", "item_id"], keep="last")
    out = []
    for version, group in rows.groupby("model_version", sort=True):
        counts = group["decision"].value_counts()
        accepted, corrected = int(counts.get("accept", 0)), int(counts.get("correct", 0))
        out.append({"model_version": version, "reviewed": len(group), "accepted": accepted, "corrected": corrected,
                    "out_of_scope": int(counts.get("out_of_scope", 0)),
                    "accuracy": round(accepted / (accepted + corrected), 4) if accepted + corrected else None})
    return pd.DataFrame(out, columns=["model_version", "reviewed", "accepted", "corrected", "out_of_scope",
                                      "accuracy"])
