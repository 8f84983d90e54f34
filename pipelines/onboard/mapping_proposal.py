"""The proposed mapping table of a new shop: for each of its native categories, the taxonomy path its products
agree on, or why none is proposed; written in data/mappings/<shop>.csv's format, ready to review and adopt.

A native category is a prefix of the shop's native paths (case-folded; shown in its most common spelling) holding at
least `min_support` products. For each, from the classifier's full paths and calibrated confidences and the
out-of-scope flags of its products:
  - `unmapped_reason = "out of scope: predicted by onboarding"` when more than `out_of_scope_majority` of them are
    flagged out of scope (agreement = confidence = that share);
  - otherwise the deepest taxonomy node on which more than `min_agreement` of its in-scope products agree, level by
    level (a node's most common child must itself hold that share), at any depth: a tie is no majority;
  - `unmapped_reason = "no agreement"` when not even the department gets that share.
A top-level native category with fewer products is listed as `too few products` so every product is covered.
agreement = the share of in-scope products whose predicted path passes through the proposed node; confidence = their
mean calibrated probability of it (0 for a product predicting elsewhere). With `name_weight` > 0 the category's own
name, classified like a product title ("Women Apparel Topwear Tunics"), votes too, weighing `name_weight` times all
its in-scope products together (agreement is then the weighted share; 0, the default, is products only); `confident` marks rows a reviewer may take
on trust (enough support, agreement and confidence: thresholds fixed a priori in ProposalConfig, never tuned on a
shop's labels). Rules follow the mapping tables' semantics: the most specific matching row wins, so a product whose
own category has no decision falls back to its nearest ancestor's.

`accept_mapping_proposal` adopts the reviewed rows (a `reviewed` cell saying yes), or every decided row at or above
a confidence, into a mapping table validated like any other (pipelines/ingest/mapping.load_mapping).
"""
from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.taxonomy.tree import path_str

PROPOSAL_FILE = "mapping.proposed.csv"
MAPPING_COLUMNS = ["native_path", "category_path", "unmapped_reason"]
PROPOSAL_COLUMNS = MAPPING_COLUMNS + ["support", "native_depth", "agreement", "confidence", "out_of_scope_share",
                                      "confident", "reviewed", "example_titles", "example_images"]
REASON_OUT_OF_SCOPE = "out of scope: predicted by onboarding"
REASON_FEW = "too few products"
REASON_NO_AGREEMENT = "no agreement"
UNRULY = (">", "*")  # a native level holding these cannot be written as a mapping rule (parse_path, wildcard)


@dataclass(frozen=True)
class ProposalConfig:
    min_support: int = 3
    min_agreement: float = 0.5  # more than half of the category's in-scope products (a majority)
    out_of_scope_majority: float = 0.5
    confident_support: int = 5
    confident_agreement: float = 0.8
    confident_confidence: float = 0.7
    examples: int = 3
    name_weight: float = 0.0  # the native category name's vote, relative to all its in-scope products together


def native_key(native) -> tuple:
    return tuple(str(x).strip().casefold() for x in native)


def native_categories(native_paths) -> dict:
    """{case-folded prefix: (display levels, [row indices])} for every prefix of every native path."""
    members, spellings = defaultdict(list), defaultdict(Counter)
    for i, native in enumerate(native_paths):
        levels = [str(x).strip() for x in native]
        for depth in range(1, len(levels) + 1):
            key = native_key(levels[:depth])
            members[key].append(i)
            spellings[key][tuple(levels[:depth])] += 1
    return {k: (spellings[k].most_common(1)[0][0], rows) for k, rows in members.items()}


def agreed_path(paths: list, min_agreement: float, weights=None) -> tuple[tuple, float]:
    """(the deepest node more than `min_agreement` of `paths` (weighted by `weights`, default 1 each) pass
    through, level by level; that share)."""
    weights = [1.0] * len(paths) if weights is None else list(weights)
    node, share, total = (), 1.0, float(sum(weights))
    while total > 0:
        counts: Counter = Counter()
        for p, w in zip(paths, weights):
            if len(p) > len(node) and p[:len(node)] == node:
                counts[p[:len(node) + 1]] += w
        if not counts:
            break
        best, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if count / total <= min_agreement:
            break
        node, share = best, count / total
    return node, (share if node else 0.0)


def _path_confidence(paths: list, conf: np.ndarray, node: tuple) -> np.ndarray:
    """Per product: its calibrated probability of `node` if its path passes through it, else 0."""
    depth = len(node)
    probs = np.prod(np.nan_to_num(conf[:, :depth], nan=1.0), axis=1) if depth else np.ones(len(paths))
    return np.array([p if tuple(path[:depth]) == node else 0.0 for path, p in zip(paths, probs)])


def _examples(products: pd.DataFrame, rows: np.ndarray, order: np.ndarray, k: int) -> tuple[str, str]:
    pick = rows[np.argsort(-order, kind="stable")][:k]
    titles = " | ".join(str(t) for t in products["title"].to_numpy()[pick])
    images = " | ".join(str(p) for p in products["image_path"].to_numpy()[pick] if isinstance(p, str) and p)
    return titles, images


def _decide(rows: np.ndarray, paths: list, conf: np.ndarray, oos: np.ndarray, cfg: ProposalConfig,
            name_path: tuple | None = None) -> dict:
    """The proposal for one native category's products (indices `rows`; `name_path`: its name's prediction)."""
    share = float(oos[rows].mean())
    if share > cfg.out_of_scope_majority:
        return {"category_path": (), "unmapped_reason": REASON_OUT_OF_SCOPE, "agreement": share,
                "confidence": share, "out_of_scope_share": share, "_order": oos[rows].astype(float)}
    inside = rows[~oos[rows]]
    in_paths = [paths[i] for i in inside]
    votes, weights = in_paths, None
    if name_path and cfg.name_weight > 0:
        votes, weights = in_paths + [tuple(name_path)], [1.0] * len(in_paths) + [cfg.name_weight * len(in_paths)]
    node, agreement = agreed_path(votes, cfg.min_agreement, weights)
    per_product = np.zeros(len(rows))
    per_product[~oos[rows]] = _path_confidence(in_paths, conf[inside], node) if node else 0.0
    return {"category_path": node, "unmapped_reason": "" if node else REASON_NO_AGREEMENT, "agreement": agreement,
            "confidence": float(per_product[~oos[rows]].mean()) if node else 0.0, "out_of_scope_share": share,
            "_order": per_product}


def _is_confident(row: dict, cfg: ProposalConfig) -> bool:
    decided = bool(row["category_path"]) or row["unmapped_reason"] == REASON_OUT_OF_SCOPE
    return (decided and row["support"] >= cfg.confident_support and row["agreement"] >= cfg.confident_agreement
            and row["confidence"] >= cfg.confident_confidence)


def propose_mapping(products: pd.DataFrame, predictions: pd.DataFrame, cfg: ProposalConfig = ProposalConfig(),
                    name_paths: dict | None = None):
    """The proposal table (PROPOSAL_COLUMNS; category_path a tuple) from row-aligned `products` (native_path,
    title, image_path) and `predictions` (full_path, conf_L1.., out_of_scope); `name_paths` {native_key: the
    predicted path of the category's name} when cfg.name_weight > 0. Reads no label."""
    paths = [tuple(p) for p in predictions["full_path"]]
    conf = predictions[[c for c in predictions.columns if c.startswith("conf_L")]].to_numpy(float)
    oos = predictions["out_of_scope"].to_numpy(bool)
    out = []
    for key, (levels, members) in sorted(native_categories(products["native_path"]).items()):
        if any(u in level for level in levels for u in UNRULY):
            continue
        rows = np.asarray(members)
        base = {"native_path": path_str(levels), "support": len(rows), "native_depth": len(levels), "reviewed": ""}
        if len(rows) < cfg.min_support:
            if len(levels) == 1:  # no ancestor covers these products: say why they get no rule
                titles, images = _examples(products, rows, np.zeros(len(rows)), cfg.examples)
                out.append(base | {"category_path": (), "unmapped_reason": REASON_FEW, "agreement": 0.0,
                                   "confidence": 0.0, "out_of_scope_share": float(oos[rows].mean()),
                                   "example_titles": titles, "example_images": images})
            continue
        decision = _decide(rows, paths, conf, oos, cfg, (name_paths or {}).get(key))
        titles, images = _examples(products, rows, decision.pop("_order"), cfg.examples)
        out.append(base | decision | {"example_titles": titles, "example_images": images})
    table = pd.DataFrame(out, columns=[c for c in PROPOSAL_COLUMNS if c != "confident"])
    table["confident"] = [_is_confident(r, cfg) for r in table.to_dict("records")]
    for column in ("agreement", "confidence", "out_of_scope_share"):
        table[column] = table[column].astype(float).round(4)
    return table[PROPOSAL_COLUMNS]


def proposal_as_csv_rows(proposal: pd.DataFrame) -> pd.DataFrame:
    return proposal.assign(category_path=[path_str(p) for p in proposal["category_path"]],
                           confident=np.where(proposal["confident"], "yes", ""))


def write_mapping_proposal(proposal: pd.DataFrame, out_dir) -> Path:
    """<out_dir>/mapping.proposed.csv, written atomically, text cells formula-neutralised for spreadsheets."""
    from pipelines.files import atomic_write_csv

    out = Path(out_dir) / PROPOSAL_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_csv(proposal_as_csv_rows(proposal), out)


def proposal_rules(proposal: pd.DataFrame):
    """The proposal's decided rows as a MappingTable (a path or 'out of scope'; 'too few' and 'no agreement' rows
    are left out, so their products fall back to the nearest decided ancestor), for scoring and review."""
    from pipelines.ingest.mapping import MappingTable, Rule

    rules = [Rule(tuple(parse_levels(r["native_path"])), tuple(r["category_path"]), r["unmapped_reason"], i + 2)
             for i, r in enumerate(proposal.to_dict("records"))
             if r["category_path"] or r["unmapped_reason"] == REASON_OUT_OF_SCOPE]
    return MappingTable(rules, source="proposal")


def parse_levels(text: str) -> list[str]:
    from pipelines.taxonomy.tree import parse_path

    return list(parse_path(text))


# ---- adopting a reviewed proposal -----------------------------------------------------------------------------

REVIEWED_YES = {"1", "true", "yes", "y", "x", "ok", "reviewed"}


class ProposalError(ValueError):
    """A proposal file that cannot be adopted (missing columns, rows naming no valid decision); lists every line."""


def _cell(row: dict, name: str) -> str:
    """A cell as written, with write_mapping_proposal's formula neutralisation ("'=...") undone."""
    from pipelines.files import FORMULA_PREFIXES

    value = (row.get(name) or "").strip()
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_PREFIXES) else value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def read_mapping_proposal(path) -> list[dict]:
    """The proposal's rows (line number, the three mapping cells, reviewed, confidence); ProposalError when a
    column is missing."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = set(MAPPING_COLUMNS + ["reviewed", "confidence"]) - set(reader.fieldnames or [])
        if missing:
            raise ProposalError(f"{path}: missing columns {sorted(missing)} (a file written by `prodcat onboard`)")
        return [{"line": i, **{c: _cell(r, c) for c in MAPPING_COLUMNS},
                 "reviewed": _cell(r, "reviewed").casefold() in REVIEWED_YES,
                 "confidence": _float(_cell(r, "confidence"))} for i, r in enumerate(reader, start=2)]


def _adopted(row: dict, min_confidence: float | None) -> bool:
    if row["reviewed"]:
        return True
    decided = bool(row["category_path"]) or row["unmapped_reason"].startswith("out of scope")
    return min_confidence is not None and decided and row["confidence"] >= min_confidence


def _merged_rules(existing, adopted: list[dict]) -> list[dict]:
    """The existing table's rules (if any) with the adopted rows added; an adopted row replaces an existing rule
    for the same native path (compared case-insensitively)."""
    rules = {}
    if existing is not None and Path(existing).exists():
        with Path(existing).open(newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                rules[native_key(parse_levels(r["native_path"]))] = {c: r.get(c) or "" for c in MAPPING_COLUMNS}
    for r in adopted:
        rules[native_key(parse_levels(r["native_path"]))] = {c: r[c] for c in MAPPING_COLUMNS}
    return list(rules.values())


def accept_mapping_proposal(proposed_csv, out_csv, reviewed_only: bool = True, min_confidence: float | None = None,
                            taxonomy=None) -> dict:
    """Adopt a reviewed proposal as the shop's mapping table `out_csv` (`prodcat mappings accept`).

    Adopted: every row whose `reviewed` cell says yes (with the reviewer's edits), and, when `min_confidence` is
    given (reviewed_only=False), every decided row (a path, or out of scope) at or above it; `too few products` and
    `no agreement` rows only when reviewed. An existing `out_csv` keeps its other rules. The result is validated
    like every mapping table (valid taxonomy paths, one decision per row) before it replaces the file, atomically;
    an invalid one leaves the file as it was."""
    from pipelines.files import atomic_output
    from pipelines.ingest.mapping import load_mapping
    from pipelines.taxonomy.tree import load_taxonomy

    if not reviewed_only and min_confidence is None:
        raise ValueError("give min_confidence to adopt rows that were not reviewed")
    taxonomy = taxonomy or load_taxonomy()
    rows = read_mapping_proposal(proposed_csv)
    adopted = [r for r in rows if _adopted(r, None if reviewed_only else min_confidence)]
    rules = _merged_rules(out_csv, adopted)
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=MAPPING_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rules)
        try:
            load_mapping(tmp, taxonomy)
        except ValueError as e:
            raise ProposalError(f"{proposed_csv}: the adopted rows do not make a valid mapping table; {out} left "
                                f"as it was:\n{str(e).split(':', 1)[-1].strip()}") from None
    return {"proposal_rows": len(rows), "adopted": len(adopted), "reviewed": sum(r["reviewed"] for r in adopted),
            "by_confidence": sum(not r["reviewed"] for r in adopted), "rules_written": len(rules), "out": str(out)}
