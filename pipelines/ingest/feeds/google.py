"""Google Merchant Center product data as RSS 2.0 (or Atom) XML with the `g:` namespace.

    <rss version="2.0" xmlns:g="http://base.google.com/ns/1.0"><channel>
      <item><g:id>0146706004</g:id><g:title>...</g:title><g:product_type>A &gt; B</g:product_type>...</item>

Each <item> (Atom: <entry>) is one record; its children in the g: namespace, or in none (RSS's own <title>,
<description>, <link>), are its columns, by local name; a g: element wins over a plain one of the same name.
The tab-separated form of the same feed is read by rows.read_tsv_rows; both forms share one column contract
(standard.GOOGLE_COLUMNS, docs/feeds.md).

The file is untrusted: it is parsed with defusedxml and any DTD is refused, so no entity is expanded (no
"billion laughs") and nothing external is fetched; the parse streams (one item in memory at a time), the file may
be at most MAX_XML_BYTES and a value at most MAX_FIELD_BYTES. Malformed XML quarantines the rest of the file with
the parser's message, as a malformed CSV does.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.ingest.csv_export import MAX_FIELD_BYTES, BadExport, check_export_file
from pipelines.ingest.feeds.rows import missing_columns_error

G_NS = "http://base.google.com/ns/1.0"
ATOM_NS = "http://www.w3.org/2005/Atom"
MAX_XML_BYTES = 4 * 1024 ** 3  # Google's own limit for one feed file
RECORD_TAGS = ("item", "entry")


def _split(tag) -> tuple[str, str]:
    if not isinstance(tag, str):
        return "", ""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def item_row(item) -> tuple[dict | None, str | None]:
    """The columns of one <item>: {local name: text}, or the reason it cannot be a row."""
    plain, google = {}, {}
    for child in item:
        ns, name = _split(child.tag)
        if ns not in ("", G_NS, ATOM_NS) or len(child):  # other vocabularies, nested groups (g:shipping)
            continue
        text = (child.text or "").strip()
        if name == "link" and ns == ATOM_NS and not text:
            text = child.get("href", "").strip()
        if len(text) > MAX_FIELD_BYTES:
            return None, f"field {name} longer than {MAX_FIELD_BYTES} characters"
        target = google if ns == G_NS else plain
        target.setdefault(name, text)  # a repeated element (additional_image_link): the first one
    return plain | google, None


def _parse_events(path: Path):
    try:
        from defusedxml.ElementTree import iterparse
    except ImportError:  # a declared dependency; this names it if an install lacks it
        raise BadExport("reading a Google XML feed needs the defusedxml package (pip install defusedxml)") from None
    return iterparse(str(path), events=("start", "end"), forbid_dtd=True, forbid_entities=True,
                     forbid_external=True)


def _check_size(path: Path):
    check_export_file(path)
    size = path.stat().st_size
    if size > MAX_XML_BYTES:
        raise BadExport(f"{path}: {size} bytes, more than the {MAX_XML_BYTES} a feed file may have")


def read_google_xml(path: Path, required: list[str]):
    """(record number, row or None, problem) per <item>; see the module docstring."""
    from defusedxml import DefusedXmlException

    path = Path(path)
    _check_size(path)
    number, stack, checked = 0, [], False
    try:
        for event, elem in _parse_events(path):
            if event == "start":
                if not stack and _split(elem.tag)[1] not in ("rss", "feed"):
                    raise BadExport(f"{path}: root element <{_split(elem.tag)[1]}> is not an RSS 2.0 <rss> or "
                                    "Atom <feed>: not a Google Merchant Center XML feed")
                stack.append(elem)
                continue
            stack.pop()
            if _split(elem.tag)[1] not in RECORD_TAGS or not stack:
                continue
            number += 1
            row, problem = item_row(elem)
            stack[-1].remove(elem)  # one item in memory at a time
            missing = [c for c in required if row is not None and c not in row]
            if missing and not checked:
                raise missing_columns_error(path, missing, list(row))
            checked = checked or row is not None
            yield number, None if missing else row, f"missing fields {missing}" if missing else problem
    except DefusedXmlException as e:
        raise BadExport(f"{path}: refused: {e} (a feed never needs a DTD or entities)") from None
    except SyntaxError as e:  # xml.etree.ElementTree.ParseError
        yield number + 1, None, f"malformed XML from here on: {e}"
