"""H&M articles sample: articles.csv + images/<first 3 digits>/<article_id>.jpg."""
from pathlib import Path

from pipelines.ingest.shops import BadRow, clean

NAME = "hm"
EXPORT_FILE = "articles.csv"
REQUIRED_COLUMNS = ["article_id", "product_code", "prod_name", "product_type_name", "product_group_name",
                    "index_group_name", "index_name", "detail_desc"]
INDEX_GENDER = {"Ladieswear": "Women", "Divided": "Women", "Menswear": "Men", "Baby/Children": "Kids"}


def native_path(row: dict) -> list[str]:
    return [clean(row[c]) for c in ("index_group_name", "product_group_name", "product_type_name")]


def gender(row: dict) -> str:
    index_name = clean(row["index_name"])
    if index_name.startswith(("Baby", "Children")):
        return "Kids"
    if index_name in ("Menswear",):
        return "Men"
    return INDEX_GENDER.get(clean(row["index_group_name"]), "Unisex")


def to_record(row: dict, input_dir: Path) -> dict:
    article_id = clean(row["article_id"])  # read as text: the leading zero is part of the id
    if not article_id:
        raise BadRow("missing article_id")
    return {
        "product_id": article_id,
        "group_id": "p:" + clean(row["product_code"]),  # colour variants share product_code and text
        "title": clean(row["prod_name"]),
        "description": clean(row["detail_desc"]),
        "brand": "H&M",
        "gender": gender(row),
        "image_path": str(Path(input_dir) / "images" / article_id[:3] / f"{article_id}.jpg"),
        "native_path": native_path(row),
    }
