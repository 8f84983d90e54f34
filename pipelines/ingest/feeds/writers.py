"""A shop's products written as a feed: Google TSV, Google RSS 2.0 XML, Shopify product CSV, or JSON Lines + contract.

Used by scripts/export_feed.py (the sample feeds of data/feeds/ and the round-trip check: a shop exported into each
format and read back gives the same products as its native export). What a feed keeps, per product record:
id, title, description, brand, gender (Google's gender + age_group), group (item_group_id / Handle), native path
(product_type / Type, levels joined by ' > ') and image (image_link / Image Src + Variant Image). Images are copied
next to the feed, named by the sha256 of their bytes (`images/<hash>.<ext>`), and linked relative to the
feed, or under `image_base` when the feed's folder is served over http(s).

The files are data for programs, written verbatim (no spreadsheet formula neutralisation, which would change
titles), atomically. They carry no price or availability: they are complete for prodcat, not for a Merchant
Center submission.
"""
from __future__ import annotations

import csv
import hashlib
import html
import json
import re
from pathlib import Path

from pipelines.files import atomic_output, atomic_write_bytes
from pipelines.ingest.feeds.google import G_NS
from pipelines.ingest.feeds.standard import GOOGLE_GENDER
from pipelines.ingest.images import ImageRefused, read_image_bytes

PATH_SEPARATOR = " > "
GOOGLE_TSV_COLUMNS = ["id", "title", "description", "image_link", "brand", "gender", "age_group", "item_group_id",
                      "product_type"]
SHOPIFY_CSV_COLUMNS = ["Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags", "Published",
                       "Option1 Name", "Option1 Value", "Variant SKU", "Image Src", "Image Position",
                       "Google Shopping / Gender", "Google Shopping / Age Group", "Variant Image", "Status"]
FEED_WRITERS = {}  # format -> writer, filled below
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def shop_records(adapter, export_dir) -> list[dict]:
    """The shop's products as its native export gives them: every record normalisation's row checks keep."""
    from pipelines.ingest.normalize import checked_records, quarantine_to

    records = []
    for _, rec in checked_records(adapter, Path(export_dir), quarantine_to([], adapter.NAME), {"rows_in": 0}):
        records.append(rec)
    return records


def copy_images(records: list[dict], out_dir: Path, image_base: str = "") -> list[str]:
    """Per record, the link of its image copied under `out_dir/images/` ('' when it has none usable)."""
    links = []
    for rec in records:
        if not rec.get("image_path") or rec.get("image_status"):
            links.append("")
            continue
        try:
            data = read_image_bytes(rec["image_path"])
        except ImageRefused:
            links.append("")
            continue
        suffix = Path(rec["image_path"]).suffix.lower() or ".jpg"
        rel = f"images/{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
        target = out_dir / rel
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        links.append(f"{image_base.rstrip('/')}/{rel}" if image_base else rel)
    return links


def _native(rec: dict) -> str:
    return PATH_SEPARATOR.join(rec.get("native_path") or [])


def _tsv_cell(value: str) -> str:
    value = str(value or "")
    if value.startswith('"') or any(ch in value for ch in "\t\r\n"):
        return '"' + " ".join(value.split()).replace('"', '""') + '"'
    return value


def google_values(rec: dict, link: str) -> dict:
    gender, age_group = GOOGLE_GENDER.get(rec.get("gender") or "Unknown", ("", ""))
    return {"id": rec["product_id"], "title": rec["title"], "description": rec.get("description") or "",
            "image_link": link, "brand": rec.get("brand") or "", "gender": gender, "age_group": age_group,
            "item_group_id": rec["group_id"], "product_type": _native(rec)}


def write_google_tsv(records: list[dict], links: list[str], path: Path, shop: str) -> Path:
    lines = ["\t".join(GOOGLE_TSV_COLUMNS)]
    for rec, link in zip(records, links):
        values = google_values(rec, link)
        lines.append("\t".join(_tsv_cell(values[c]) for c in GOOGLE_TSV_COLUMNS))
    with atomic_output(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_google_xml(records: list[dict], links: list[str], path: Path, shop: str) -> Path:
    import xml.etree.ElementTree as ET

    ET.register_namespace("g", G_NS)
    rss = ET.Element("rss", {"version": "2.0"})
    channel = ET.SubElement(rss, "channel")
    ET.SubElement(channel, "title").text = f"{shop} products"
    ET.SubElement(channel, "description").text = f"{shop} product data (Google Merchant Center), written by prodcat"
    for rec, link in zip(records, links):
        item = ET.SubElement(channel, "item")
        for name, value in google_values(rec, link).items():
            if value:
                ET.SubElement(item, f"{{{G_NS}}}{name}").text = _XML_INVALID.sub("", str(value))
    ET.indent(rss)
    with atomic_output(path) as tmp:
        ET.ElementTree(rss).write(tmp, encoding="utf-8", xml_declaration=True)
    return path


def shopify_values(rec: dict, link: str, position: int) -> dict:
    gender, age_group = GOOGLE_GENDER.get(rec.get("gender") or "Unknown", ("", ""))
    description = rec.get("description") or ""
    return {"Handle": rec["group_id"], "Title": rec["title"],
            "Body (HTML)": f"<p>{html.escape(description, quote=False)}</p>" if description else "",
            "Vendor": rec.get("brand") or "", "Product Category": "", "Type": _native(rec), "Tags": "",
            "Published": "true", "Option1 Name": "Variant", "Option1 Value": rec["product_id"],
            "Variant SKU": rec["product_id"], "Image Src": link, "Image Position": str(position) if link else "",
            "Google Shopping / Gender": gender, "Google Shopping / Age Group": age_group, "Variant Image": link,
            "Status": "active"}


def write_shopify_csv(records: list[dict], links: list[str], path: Path, shop: str) -> Path:
    """One row per product, the products of a group under one Handle (its rows adjacent, as Shopify writes them);
    every variant row carries its own Title, Type and gender, so variants that differ keep their own."""
    by_group: dict[str, list] = {}
    for rec, link in zip(records, links):
        by_group.setdefault(rec["group_id"], []).append((rec, link))
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, SHOPIFY_CSV_COLUMNS)
            writer.writeheader()
            for members in by_group.values():
                position = 0
                for rec, link in members:
                    position += bool(link)
                    writer.writerow(shopify_values(rec, link, position))
    return path


def jsonl_contract(shop: str, file_name: str) -> str:
    """The YAML contract of the JSON Lines export write_jsonl writes: the declarative adapter's example."""
    return f"""# A shop export in JSON Lines, read through this contract (docs/feeds.md): written by scripts/export_feed.py
shop: {shop}
file: {file_name}
format: jsonl
columns:
  id: sku
  title: name
  description: {{column: description, optional: true}}
  brand: {{column: brand, optional: true}}
  gender: {{column: gender, optional: true}}
  group: {{column: style, optional: true}}
  image: {{column: image, optional: true}}
  native_path: {{column: categories}}   # a JSON list of levels
"""


def write_jsonl(records: list[dict], links: list[str], path: Path, shop: str) -> Path:
    """One JSON object per product, and beside it `<stem>.yaml`, the contract that reads it back."""
    lines = [json.dumps({"sku": rec["product_id"], "name": rec["title"], "description": rec.get("description") or "",
                         "brand": rec.get("brand") or "", "gender": rec.get("gender") or "", "style": rec["group_id"],
                         "image": link, "categories": list(rec.get("native_path") or [])}, ensure_ascii=False)
             for rec, link in zip(records, links)]
    with atomic_output(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    atomic_write_bytes(path.with_suffix(".yaml"), jsonl_contract(shop, path.name).encode())
    return path


FEED_WRITERS.update({"google-tsv": write_google_tsv, "google-xml": write_google_xml, "shopify": write_shopify_csv,
                     "jsonl": write_jsonl})


def export_feed(records: list[dict], fmt: str, path: str | Path, shop: str, image_base: str = "") -> int:
    """Write `records` as a feed of format `fmt` at `path`, copying their images beside it; -> images linked."""
    if fmt not in FEED_WRITERS:
        raise ValueError(f"unknown feed format {fmt!r} to write; known: {', '.join(FEED_WRITERS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    links = copy_images(records, path.parent, image_base)
    FEED_WRITERS[fmt](records, links, path, shop)
    return sum(1 for link in links if link)
