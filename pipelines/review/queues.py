"""The three review queues of one onboarding (or classification) output folder, built from its files.

    source = load_review_source("work/onboard/acme")   # predictions.csv, products.parquet, label_first.csv, ...
    source.queues["needs_review"].items[0].title

  - `needs_review`: the products flagged `needs_review` or `out_of_scope` in predictions.csv, joined to the
    products' texts and images (products.parquet, written by `prodcat onboard`, or a products frame given);
  - `label_first`: the products onboarding picked to label first (label_first.csv, pipelines/onboard/label_first);
  - `mappings`: the proposed native-category mappings (mapping.proposed.csv), one item per native category.
A file that is absent gives an empty queue; a folder with no predictions.csv, or predictions without texts to show,
is a ReviewSourceError naming what is missing. Images are served only from the folders the queue's own items
point into (`image_file`), by file name: a name with a path in it is refused, so no request reaches another file.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

QUEUE_LABELS = {"needs_review": "Products the model was unsure of (needs review / out of scope)",
                "label_first": "Products to label first (active learning)",
                "mappings": "Proposed native-category mappings"}
SAFE_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class ReviewSourceError(ValueError):
    """A review folder that cannot be shown (missing predictions, no product texts)."""


@dataclass
class ReviewItem:
    queue: str
    shop: str
    item_id: str
    title: str
    description: str = ""
    image: Path | None = None
    predicted_path: str = ""
    confidences: list = field(default_factory=list)  # [(level name, confidence)]
    alternatives: list = field(default_factory=list)  # [(path, score)]
    flags: dict = field(default_factory=dict)  # e.g. needs_review, out_of_scope, support

    @property
    def image_name(self) -> str:
        return self.image.name if self.image is not None else ""


@dataclass
class ReviewQueue:
    name: str
    items: list[ReviewItem]

    @property
    def label(self) -> str:
        return QUEUE_LABELS[self.name]

    @property
    def image_dirs(self) -> set[Path]:
        return {item.image.parent for item in self.items if item.image is not None}

    def image_file(self, name: str) -> Path | None:
        """The image called `name` in one of this queue's image folders, or None: a plain file name only (no
        separator, no leading dot), resolved and checked to sit directly in an allowed folder."""
        if not SAFE_IMAGE_NAME.match(name or ""):
            return None
        for folder in sorted(self.image_dirs):
            candidate = (folder / name).resolve()
            if candidate.parent == folder.resolve() and candidate.is_file():
                return candidate
        return None


@dataclass
class ReviewSource:
    folder: Path
    shop: str
    model_version: str
    queues: dict[str, ReviewQueue]


def read_output_csv(path: Path) -> pd.DataFrame:
    """A CSV written by pipelines/files.atomic_write_csv, every cell a string, formula neutralisation undone."""
    from pipelines.files import FORMULA_PREFIXES

    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    undo = (lambda v: v[1:] if v.startswith("'") and v[1:].startswith(FORMULA_PREFIXES) else v)
    return df.apply(lambda col: col.map(undo)) if len(df) else df


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _flag(value) -> bool:
    return str(value).strip().casefold() in ("true", "1", "yes")


def _confidences(row: dict, path: str) -> list:
    from pipelines.taxonomy.tree import parse_path

    levels = parse_path(path)
    out = []
    for i, name in enumerate(levels):
        value = row.get(f"conf_L{i + 1}", "")
        out.append((name, float(value) if value not in ("", None) else None))
    return out


def _alternatives(row: dict) -> list:
    """Top alternatives when the predictions carry them (columns alt1_path, alt1_score, ...)."""
    out, i = [], 1
    while row.get(f"alt{i}_path"):
        score = row.get(f"alt{i}_score", "")
        out.append((row[f"alt{i}_path"], float(score) if score else None))
        i += 1
    return out


def _image(value) -> Path | None:
    if isinstance(value, str) and value and not value.startswith(("http://", "https://")):
        path = Path(value.removeprefix("file://"))
        return path if path.is_file() else None
    return None


def product_item(queue: str, shop: str, row: dict, product: dict | None, flags: dict) -> ReviewItem:
    """One product's item: texts and image from `product`, prediction from `row` (a predictions.csv row)."""
    product = product or {}
    path = row.get("model_path") or row.get("category_path") or row.get("predicted_path") or ""
    return ReviewItem(queue=queue, shop=shop, item_id=str(row["product_id"]),
                      title=_text(product.get("title")) or _text(row.get("title")),
                      description=_text(product.get("description")), image=_image(product.get("image_path")),
                      predicted_path=path, confidences=_confidences(row, path), alternatives=_alternatives(row),
                      flags=flags)


def needs_review_queue(predictions: pd.DataFrame, products: dict, shop: str) -> ReviewQueue:
    items = []
    for row in predictions.to_dict("records"):
        flags = {k: _flag(row.get(k, "")) for k in ("needs_review", "out_of_scope")}
        if any(flags.values()):
            items.append(product_item("needs_review", shop, row, products.get(str(row["product_id"])), flags))
    return ReviewQueue("needs_review", items)


def label_first_queue(picks: pd.DataFrame, predictions: pd.DataFrame, products: dict, shop: str) -> ReviewQueue:
    by_id = {str(r["product_id"]): r for r in predictions.to_dict("records")}
    items = []
    for pick in picks.to_dict("records"):
        row = by_id.get(str(pick["product_id"]), {}) | {"product_id": pick["product_id"]}
        row.setdefault("predicted_path", pick.get("predicted_path", ""))
        flags = {"rank": pick.get("rank", ""), "uncertainty": pick.get("uncertainty", "")}
        items.append(product_item("label_first", shop, row, products.get(str(pick["product_id"])), flags))
    return ReviewQueue("label_first", items)


def mapping_queue(proposal: pd.DataFrame, shop: str) -> ReviewQueue:
    items = []
    for row in proposal.to_dict("records"):
        images = [p.strip() for p in str(row.get("example_images", "")).split(" | ") if p.strip()]
        path = row.get("category_path", "")
        conf = row.get("confidence", "")
        items.append(ReviewItem(
            queue="mappings", shop=shop, item_id=row["native_path"], title=row["native_path"],
            description="Examples: " + str(row.get("example_titles", "")), image=_image(images[0]) if images else None,
            predicted_path=path, confidences=[("path", float(conf))] if path and conf else [],
            flags={k: row.get(k, "") for k in ("support", "agreement", "unmapped_reason", "confident")}))
    return ReviewQueue("mappings", items)


def _source_info(folder: Path, shop: str | None) -> tuple[str, str]:
    info_file = folder / "onboarding.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    clf = info.get("classifier", {})
    version = str(clf.get("stage2_source") or clf.get("stage1") or clf.get("mode") or "")
    return shop or info.get("shop") or folder.name, version


def export_products(platform: str, input_dir) -> pd.DataFrame:
    """The texts and image paths of a raw shop export (what `prodcat classify` read), image paths made absolute."""
    from pipelines.inference.export import read_export_unlabelled

    if not platform:
        raise ReviewSourceError(f"the export {input_dir} needs its shop's name (--review-platform)")
    products, _, _ = read_export_unlabelled(platform, input_dir)
    products["image_path"] = [str(Path(p).resolve()) if isinstance(p, str) and p and "://" not in p else p
                              for p in products["image_path"]]
    return products


def read_predictions(path: Path) -> pd.DataFrame:
    """predictions.csv of `prodcat onboard`, or the .csv / .parquet file `prodcat classify --out` wrote."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path).astype(str)
    return read_output_csv(path)


def load_review_source(folder, products: pd.DataFrame | None = None, shop: str | None = None,
                       model_version: str | None = None, export: tuple | None = None) -> ReviewSource:
    """The queues of an output folder (or of a predictions file). The products' texts and images come from
    `products` (product_id, title, description, image_path), else from `export` = (platform, raw export dir) -
    for a `prodcat classify` output - else from the folder's products.parquet (`prodcat onboard`)."""
    folder = Path(folder)
    pred_file, folder = (folder, folder.parent) if folder.is_file() else (folder / "predictions.csv", folder)
    if not pred_file.is_file():
        raise ReviewSourceError(f"{folder}: no predictions.csv (give an output folder of `prodcat onboard`, or the "
                                "predictions file of `prodcat classify` with its export)")
    predictions = read_predictions(pred_file)
    if products is None and export is not None:
        products = export_products(*export)
        shop = shop or export[0]
    if products is None and (folder / "products.parquet").is_file():
        products = pd.read_parquet(folder / "products.parquet")
    if products is None and "title" not in predictions.columns:
        raise ReviewSourceError(f"{folder}: predictions.csv holds no titles and there is no products.parquet "
                                "beside it: nothing to show a reviewer")
    by_id = {} if products is None else {str(r["product_id"]): r for r in products.to_dict("records")}
    shop, version = _source_info(folder, shop)
    picks = read_output_csv(folder / "label_first.csv") if (folder / "label_first.csv").is_file() else pd.DataFrame(
        columns=["product_id"])
    proposal = (read_output_csv(folder / "mapping.proposed.csv") if (folder / "mapping.proposed.csv").is_file()
                else pd.DataFrame(columns=["native_path"]))
    queues = {"needs_review": needs_review_queue(predictions, by_id, shop),
              "label_first": label_first_queue(picks, predictions, by_id, shop),
              "mappings": mapping_queue(proposal, shop)}
    return ReviewSource(folder, shop, model_version if model_version is not None else version, queues)


def queue_progress(queue: ReviewQueue, latest: pd.DataFrame) -> dict:
    """{decided, total}: items whose latest decision (skips aside) is in `latest` (DecisionStore.latest rows)."""
    mine = latest[(latest["queue"] == queue.name) & (latest["decision"] != "skip")]
    decided = set(zip(mine["shop"], mine["item_id"]))
    return {"decided": sum((i.shop, i.item_id) in decided for i in queue.items), "total": len(queue.items)}
