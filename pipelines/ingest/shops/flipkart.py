"""Flipkart e-commerce sample: one CSV, category tree as a string holding a JSON list, no images."""
import json
import re
from pathlib import Path

from pipelines.ingest.shops import BadRow, clean

NAME = "flipkart"
EXPORT_FILE = "flipkart_com-ecommerce_sample.csv"
REQUIRED_COLUMNS = ["uniq_id", "product_name", "product_category_tree", "brand"]


def native_path(tree: str) -> list[str]:
    """'["A >> B >> C"]' -> ['A', 'B', 'C']; tolerates a bare path or a broken list."""
    text = str(tree or "").strip()
    try:
        value = json.loads(text)
        text = value[0] if isinstance(value, list) and value else str(value)
    except (json.JSONDecodeError, TypeError, IndexError):
        text = text.strip("[]\"' ")
    return [clean(p) for p in text.split(">>") if clean(p)]


def gender(title: str, native: list[str]) -> str:
    text = " ".join(native[:3] + [title]).casefold()
    for pattern, value in ((r"\b(baby|infant|kids?)\b", "Kids"), (r"\bgirl", "Girls"), (r"\bboy", "Boys"),
                           (r"\b(women|ladies)", "Women"), (r"\bmen\b|\bmen's", "Men")):
        if re.search(pattern, text):
            return value
    return "Unisex"


def to_record(row: dict, input_dir: Path) -> dict:
    pid = clean(row["uniq_id"])
    if not pid:
        raise BadRow("missing uniq_id")
    title = clean(row["product_name"])
    native = native_path(row["product_category_tree"])
    if not native:
        raise BadRow("empty product_category_tree")
    return {
        "product_id": pid,
        "group_id": "t:" + title.casefold(),  # size variants repeat the same name and tree
        "title": title,
        "description": "",
        "brand": clean(row["brand"]),
        "gender": gender(title, native),
        "image_path": None,
        "native_path": native,
    }
