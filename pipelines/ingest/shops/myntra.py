"""Myntra "Fashion Product Images": styles.csv + images/<id>.jpg."""
from pathlib import Path

from pipelines.ingest.shops import BadRow, clean

NAME = "myntra"
EXPORT_FILE = "styles.csv"
REQUIRED_COLUMNS = ["id", "gender", "masterCategory", "subCategory", "articleType", "productDisplayName"]
GENDERS = {"men": "Men", "women": "Women", "boys": "Boys", "girls": "Girls", "unisex": "Unisex"}


def native_path(row: dict) -> list[str]:
    return [clean(row[c]) for c in ("gender", "masterCategory", "subCategory", "articleType")]


def to_record(row: dict, input_dir: Path) -> dict:
    pid = clean(row["id"])
    if not pid:
        raise BadRow("missing id")
    title = clean(row["productDisplayName"])
    return {
        "product_id": pid,
        # colour/size variants repeat the display name: keep them together across splits
        "group_id": "t:" + title.casefold(),
        "title": title,
        "description": "",
        "brand": "",
        "gender": GENDERS.get(clean(row["gender"]).casefold(), "Unknown"),
        "image_path": str(Path(input_dir) / "images" / f"{pid}.jpg"),
        "native_path": native_path(row),
    }
