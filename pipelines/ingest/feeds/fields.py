"""A row of an export -> the canonical product record, by the shop's contract (contract.py).

The record has the fields normalisation needs (product_id, group_id, title, description, brand, gender,
image_path, native_path); a row that cannot be a product raises BadRow with the quarantine reason. An image
reference that must not be read (outside the export, another URL scheme) leaves image_path None and puts the
reason in the record's `image_status`, so the product keeps its text and says why it has no image.

Named hooks, for rules YAML cannot express:
    parse: json_list     the cell holds a JSON list whose first item is the path ('["A >> B"]'; Flipkart)
    parse: html          the cell holds HTML (Shopify's Body (HTML)): tags dropped, entities decoded
    hook: words          gender named in the first three native levels or the title (baby/kids, girl, boy,
                         women/ladies, men), else Unisex: for a shop with no gender column
    hook: google_gender  Google's gender + age_group columns -> Men/Women/Boys/Girls/Kids/Unisex/Unknown
"""
from __future__ import annotations

import json
import re
import string

from pipelines.ingest.feeds.contract import FieldSpec, ShopContract
from pipelines.ingest.feeds.standard import CHILD_AGE_GROUPS
from pipelines.ingest.images import ImageRefused, locate_image
from pipelines.ingest.shops import BadRow, clean

WORD_GENDERS = ((r"\b(baby|infant|kids?)\b", "Kids"), (r"\bgirl", "Girls"), (r"\bboy", "Boys"),
                (r"\b(women|ladies)", "Women"), (r"\bmen\b|\bmen's", "Men"))


def json_list_text(cell) -> str:
    """'["A >> B >> C"]' -> 'A >> B >> C'; a bare path or a broken list is read as text."""
    text = str(cell or "").strip()
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text.strip("[]\"' ")
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return str(value)


def html_text(cell) -> str:
    """The text of an HTML fragment (script and style dropped, block ends as spaces, entities decoded)."""
    from html.parser import HTMLParser

    parts, skip = [], []

    class _Text(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag in ("script", "style"):
                skip.append(tag)
            parts.append(" ")

        def handle_endtag(self, tag):
            if skip and skip[-1] == tag:
                skip.pop()
            parts.append(" ")

        def handle_data(self, data):
            if not skip:
                parts.append(data)

    parser = _Text(convert_charrefs=True)
    parser.feed(str(cell or ""))
    parser.close()
    return clean("".join(parts))


def words_gender(title: str, native: list[str]) -> str:
    text = " ".join(native[:3] + [title]).casefold()
    for pattern, value in WORD_GENDERS:
        if re.search(pattern, text):
            return value
    return "Unisex"


def google_gender(gender: str, age_group: str) -> str:
    """Google's gender (male/female/unisex) and age_group (newborn, infant, toddler, kids, adult) as one value."""
    gender, child = clean(gender).casefold(), clean(age_group).casefold() in CHILD_AGE_GROUPS
    if gender == "male":
        return "Boys" if child else "Men"
    if gender == "female":
        return "Girls" if child else "Women"
    if gender == "unisex" or (child and not gender):
        return "Kids" if child else "Unisex"
    return "Unknown"


def raw_cell(spec: FieldSpec, row: dict):
    """The first non-empty of the field's column and fallbacks (a list value counts when it has items)."""
    for column in ([spec.column] if spec.column else []) + list(spec.fallback):
        value = row.get(column, "")
        if value not in ("", None, []):
            return value
    return ""


def _cell_text(value, spec: FieldSpec) -> str:
    if isinstance(value, list):
        raise BadRow(f"{spec.column}: a list where text was expected")
    if spec.parse == "json_list":
        return clean(json_list_text(value))
    if spec.parse == "html":
        return html_text(value)
    return clean(value)


def render_template(template: str, row: dict) -> str:
    out = []
    for literal, name, fmt, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            value = clean(row.get(name, ""))
            out.append(value[:int(fmt[1:])] if fmt else value)
    return "".join(out)


def field_text(spec: FieldSpec | None, row: dict) -> str:
    """A text field: constant, template, or the cell through rules, map/default, casefold and prefix."""
    if spec is None:
        return ""
    if spec.value is not None:
        return spec.value
    if spec.template:
        return render_template(spec.template, row)
    for rule in spec.rules:
        if rule.matches(clean(row.get(rule.column, ""))):
            return rule.value
    text = _cell_text(raw_cell(spec, row), spec)
    if spec.map or spec.default is not None:
        return spec.map.get(text.casefold(), text if spec.default is None else spec.default)
    return spec.prefix + (text.casefold() if spec.casefold else text) if text else ""


def field_path(spec: FieldSpec | None, row: dict) -> list[str]:
    """The native category path: fixed columns (every level kept, empty ones too), a list cell, or a cell split
    at the separator (empty levels dropped)."""
    if spec is None:
        return []
    if spec.columns:
        return [clean(row.get(c, "")) for c in spec.columns]
    value = raw_cell(spec, row)
    if isinstance(value, list):
        return [clean(v) for v in value if clean(v)]
    text = _cell_text(value, spec)
    levels = text.split(spec.separator) if spec.separator else [text]
    return [clean(level) for level in levels if clean(level)]


def gender_of(spec: FieldSpec | None, row: dict, title: str, native: list[str]) -> str:
    if spec is not None and spec.hook == "words":
        return words_gender(title, native)
    if spec is not None and spec.hook == "google_gender":
        return google_gender(*(row.get(c, "") for c in spec.columns[:2]))
    return field_text(spec, row) or "Unknown"


def build_record(contract: ShopContract, row: dict, export_dir) -> dict:
    """The canonical record of one row; BadRow for a row that cannot be a product."""
    fields = contract.fields
    pid = field_text(fields["id"], row)
    if not pid:
        raise BadRow(f"missing {fields['id'].column or 'id'}")
    title = field_text(fields["title"], row)
    native = field_path(fields.get("native_path"), row)
    native_spec = fields.get("native_path")
    if native_spec is not None and native_spec.required and not native:
        raise BadRow(f"empty {native_spec.column or 'native_path'}")
    group = field_text(fields.get("group"), row)
    record = {"product_id": pid, "group_id": group or f"id:{pid}", "title": title,
              "description": field_text(fields.get("description"), row),
              "brand": field_text(fields.get("brand"), row),
              "gender": gender_of(fields.get("gender"), row, title, native),
              "image_path": None, "native_path": native}
    try:
        record["image_path"] = locate_image(field_text(fields.get("image"), row), export_dir)
    except ImageRefused as e:
        record["image_status"] = str(e)
    return record
