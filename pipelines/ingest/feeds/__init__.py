"""Feeds: a shop's export in any supported format, read through one column contract (docs/feeds.md).

    feed = load_feed("exports/acme/products.xml", fmt=None, shop="acme")   # format detected from the file
    for line, row, problem in feed.rows(): ...                             # what normalisation reads
    record = feed.adapter.to_record(row, feed.export_dir)

Formats: `google-tsv` and `google-xml` (Google Merchant Center product data), `shopify` (Shopify product CSV
export), `google` (either Google form, told apart by the file), and `yaml` (a contract naming any CSV / TSV / JSON
Lines / Parquet export's columns; `file` is relative to the contract's folder). The benchmark shops' contracts are
data/shops/<shop>.yaml (`shop_adapter`, behind `pipelines.ingest.shops.get_adapter`).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pipelines.ingest.csv_export import check_export_file
from pipelines.ingest.feeds.adapter import FeedAdapter
from pipelines.ingest.feeds.contract import (SHOP_NAME, SHOPS_DIR, TABLE_FORMATS, ContractError, known_shops,
                                             load_shop_contract, parse_contract)
from pipelines.ingest.feeds.google import G_NS
from pipelines.ingest.shops import BadExport

FEED_FORMATS = ("google", "google-tsv", "google-xml", "shopify", "yaml")
SNIFF_BYTES = 8192


class UnknownFeedFormat(BadExport):
    """A feed whose format is not one prodcat reads, or cannot be told from the file."""


@dataclass(frozen=True)
class Feed:
    adapter: FeedAdapter
    export_dir: Path  # images given as relative paths or file:// URLs must lie inside it

    @property
    def path(self) -> Path:
        return self.export_dir / self.adapter.EXPORT_FILE

    @property
    def format(self) -> str:
        return self.adapter.FORMAT

    def rows(self):
        return self.adapter.read_rows(self.export_dir)


def shop_adapter(shop: str, shops_dir: str | Path | None = None) -> FeedAdapter:
    """The adapter of a registered shop: its contract `<shops_dir>/<shop>.yaml` (default data/shops/)."""
    shops_dir = Path(shops_dir or SHOPS_DIR)
    path = shops_dir / f"{shop}.yaml"
    if not isinstance(shop, str) or not SHOP_NAME.match(shop) or not path.is_file():
        raise BadExport(f"unknown platform {shop!r}: no shop contract {path}; known: "
                        f"{', '.join(known_shops(shops_dir)) or 'none'}")
    contract = load_shop_contract(path)
    if contract.shop != shop:
        raise ContractError(f"{path}: names shop {contract.shop!r}, but the file is the contract of {shop!r}")
    return FeedAdapter(contract)


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(SNIFF_BYTES)


def _first_line(head: bytes) -> str:
    return head.split(b"\n", 1)[0].decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r")


def detect_feed_format(path: str | Path) -> str:
    """The feed format of a file, from its name and first bytes (see the module docstring)."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return "yaml"
    check_export_file(path)
    head = _head(path)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<"):
        if G_NS.encode() in head:
            return "google-xml"
        raise UnknownFeedFormat(f"{path}: XML without the Google namespace {G_NS}: not a Google Merchant Center "
                                f"feed; known formats: {', '.join(FEED_FORMATS)}")
    first = _first_line(head)
    if "\t" in first and {"id", "title"} <= {c.strip() for c in first.split("\t")}:
        return "google-tsv"
    columns = {c.strip() for c in next(csv.reader([first]), [])}
    if {"Handle", "Title"} <= columns:
        return "shopify"
    raise UnknownFeedFormat(f"{path}: cannot tell the feed format (header starts {first[:80]!r}); known formats: "
                            f"{', '.join(FEED_FORMATS)}. Another CSV, JSON Lines or Parquet export needs a YAML "
                            "contract naming its columns (docs/feeds.md), read with format 'yaml'")


def load_feed(path: str | Path, fmt: str | None = None, shop: str | None = None) -> Feed:
    """A feed file (or, for format 'yaml', a contract) ready to read; `shop` names the shop for the standard
    formats (a contract names its own; a different `shop` is an error)."""
    path = Path(path)
    fmt = fmt or detect_feed_format(path)
    if fmt == "google":
        fmt = detect_feed_format(path)
        if not fmt.startswith("google"):
            raise UnknownFeedFormat(f"{path}: format 'google' given, but the file reads as {fmt}")
    if fmt == "yaml":
        contract = load_shop_contract(path)
        if shop is not None and shop != contract.shop:
            raise ContractError(f"{path}: the contract names shop {contract.shop!r}, not {shop!r}")
        return Feed(FeedAdapter(contract), path.parent)
    if fmt in TABLE_FORMATS:
        raise UnknownFeedFormat(f"a {fmt} export needs a YAML contract naming its columns (docs/feeds.md): write "
                                f"one beside {path.name} and read it with format 'yaml'")
    if fmt not in FEED_FORMATS:
        raise UnknownFeedFormat(f"unknown feed format {fmt!r}; known formats: {', '.join(FEED_FORMATS)}")
    if shop is None:
        raise BadExport(f"{path}: a {fmt} feed needs the shop's name")
    contract = parse_contract({"shop": shop, "file": path.name, "format": fmt}, str(path))
    return Feed(FeedAdapter(contract), path.parent)
