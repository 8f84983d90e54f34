"""Feeds: the benchmark shops through their YAML contracts, the standard feed formats, the declarative adapter,
and the round trip native export -> Google TSV / Google XML / Shopify CSV / JSON Lines -> the same products."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipelines.ingest.feeds import FEED_FORMATS, FeedAdapter, UnknownFeedFormat, detect_feed_format, load_feed
from pipelines.ingest.feeds.contract import ContractError, parse_contract
from pipelines.ingest.feeds.writers import shop_records
from pipelines.ingest.mapping import load_mapping
from pipelines.ingest.normalize import checked_records, quarantine_to
from pipelines.ingest.shops import BadExport, BadRow, get_adapter
from pipelines.settings import DATA, PLATFORMS, ROOT, SAMPLE_DIR
from pipelines.taxonomy.tree import load_taxonomy

FEEDS = DATA / "feeds"
# sha256[:16] of every row the old Python adapters (pipelines/ingest/shops/{myntra,hm,flipkart}.py at 464b6c6)
# gave for the sample: the record (image path relative to the export) or the quarantine reason, in file order
OLD_ADAPTER_FINGERPRINTS = {"myntra": "10949d0dbecc9bab", "hm": "6235679f148fc9f2", "flipkart": "541a6b65f0684f2a"}
EXTENSIONS = {"google-tsv": "tsv", "google-xml": "xml", "shopify": "csv", "jsonl": "jsonl"}


def adapter_rows(adapter, export_dir: Path) -> list:
    out = []
    for line, row, problem in adapter.read_rows(export_dir):
        if problem:
            out.append([line, problem])
            continue
        try:
            rec = dict(adapter.to_record(row, export_dir))
        except BadRow as e:
            out.append([line, str(e)])
            continue
        rec["image_path"] = rec["image_path"] and str(Path(rec["image_path"]).relative_to(export_dir))
        out.append([line, rec])
    return out


def fingerprint(rows: list) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True).encode() + b"\n")
    return h.hexdigest()[:16]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_benchmark_shops_are_yaml_contracts_giving_the_old_adapters_records(platform):
    adapter = get_adapter(platform)
    assert isinstance(adapter, FeedAdapter) and (ROOT / "data" / "shops" / f"{platform}.yaml").is_file()
    rows = adapter_rows(adapter, SAMPLE_DIR / platform)
    assert fingerprint(rows) == OLD_ADAPTER_FINGERPRINTS[platform]


def test_hm_and_flipkart_quirks_through_the_contract():
    hm = dict(adapter_rows(get_adapter("hm"), SAMPLE_DIR / "hm"))
    rec = next(r for r in hm.values() if isinstance(r, dict))
    assert rec["product_id"].startswith("0") and rec["image_path"] == f"images/{rec['product_id'][:3]}/" \
                                                                     f"{rec['product_id']}.jpg"
    assert rec["group_id"].startswith("p:") and rec["brand"] == "H&M"
    flipkart = get_adapter("flipkart")
    row = {"uniq_id": "x1", "product_name": "Oye Boy's Dungaree", "brand": "Oye",
           "product_category_tree": '["Clothing >> Kids\' Clothing >> Boys Wear >> Dungarees"]'}
    rec = flipkart.to_record(row, SAMPLE_DIR / "flipkart")
    assert rec["native_path"] == ["Clothing", "Kids' Clothing", "Boys Wear", "Dungarees"]
    assert rec["gender"] == "Kids" and rec["group_id"] == "t:oye boy's dungaree" and rec["image_path"] is None
    with pytest.raises(BadRow, match="empty product_category_tree"):
        flipkart.to_record(row | {"product_category_tree": "[]"}, SAMPLE_DIR / "flipkart")


def test_unknown_platform_names_the_known_ones():
    with pytest.raises(BadExport, match="known: flipkart, hm, myntra"):
        get_adapter("nosuchshop")
    with pytest.raises(BadExport, match="unknown platform"):
        get_adapter("../hm")


def test_contract_naming_a_column_the_file_lacks_lists_missing_and_found(tmp_path):
    (tmp_path / "export.csv").write_text("sku,name\n1,Blue shirt\n")
    (tmp_path / "acme.yaml").write_text("shop: acme\nfile: export.csv\nformat: csv\ncolumns:\n  id: sku\n"
                                        "  title: name\n  native_path: {column: category, separator: '/'}\n"
                                        "  brand: maker\n")
    feed = load_feed(tmp_path / "acme.yaml")
    with pytest.raises(BadExport) as err:
        list(feed.rows())
    message = str(err.value)
    assert "missing required columns ['category', 'maker']" in message and "found ['sku', 'name']" in message


def test_contract_validation_reports_every_problem_at_once():
    doc = {"shop": "bad/name", "file": "../outside.csv", "format": "xlsx", "extra": 1,
           "columns": {"title": {"column": "t", "colour": "x"}, "colour": "c",
                       "image": {"template": "{id.__class__}"}, "gender": {"hook": "astrology"},
                       "native_path": {"column": "c", "parse": "yaml"}}}
    with pytest.raises(ContractError) as err:
        parse_contract(doc, "acme.yaml")
    message = str(err.value)
    for expected in ("unknown keys ['extra']", "shop: 'bad/name'", "file: '../outside.csv'", "format: 'xlsx'",
                     "unknown fields ['colour']", "missing required fields ['id']", "columns.title: unknown keys",
                     "template field", "unknown hook 'astrology'", "unknown parser 'yaml'"):
        assert expected in message, (expected, message)


def test_unknown_or_undetectable_format_lists_the_known_ones(tmp_path):
    with pytest.raises(UnknownFeedFormat, match="known formats: " + ", ".join(FEED_FORMATS)):
        load_feed(FEEDS / "hm" / "google.tsv", fmt="excel", shop="hm")
    plain = tmp_path / "export.csv"
    plain.write_text("sku,name\n1,Blue shirt\n")
    with pytest.raises(UnknownFeedFormat, match="needs a YAML contract"):
        load_feed(plain, shop="acme")
    with pytest.raises(UnknownFeedFormat, match="needs a YAML contract"):
        load_feed(plain, fmt="csv", shop="acme")


def test_sample_feeds_are_detected_and_give_mapped_products():
    expected = {"google.tsv": "google-tsv", "google.xml": "google-xml", "shopify.csv": "shopify",
                "products.yaml": "yaml"}
    taxonomy = load_taxonomy()
    for shop in ("hm", "myntra"):
        mapping = load_mapping(DATA / "mappings" / f"{shop}.csv", taxonomy)
        for name, fmt in expected.items():
            assert detect_feed_format(FEEDS / shop / name) == fmt
            feed = load_feed(FEEDS / shop / name, shop=shop)
            quarantine, counter = [], {"rows_in": 0}
            records = [r for _, r in checked_records(feed.adapter, feed.export_dir, quarantine_to(quarantine, shop),
                                                     counter)]
            assert 30 <= len(records) == counter["rows_in"] and not quarantine
            assert sum(r["image_path"] is not None for r in records) >= len(records) - 2
            assert all(Path(r["image_path"]).is_file() for r in records if r["image_path"])
            mapped = [mapping.lookup(r["native_path"]) for r in records]
            assert all(rule is not None for rule in mapped)


def export(shop: str, fmt: str, out: Path, *extra) -> Path:
    path = out / f"{shop}.{EXTENSIONS[fmt]}"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_feed.py"), "--shop", shop, "--format", fmt,
                          "--out", str(path), *extra], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return path


def _image_sha(path) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else None


def product_key(rec: dict) -> tuple:
    return (rec["product_id"], rec["group_id"], rec["title"], rec["description"], rec["brand"], rec["gender"],
            tuple(rec["native_path"]))


@pytest.mark.parametrize("fmt", sorted(EXTENSIONS))
@pytest.mark.parametrize("shop", PLATFORMS)
def test_each_feed_format_round_trips_the_sample(shop, fmt, tmp_path):
    native = shop_records(get_adapter(shop), SAMPLE_DIR / shop)
    path = export(shop, fmt, tmp_path)
    feed = load_feed(path.with_suffix(".yaml") if fmt == "jsonl" else path, shop=shop)
    back = shop_records(feed.adapter, feed.export_dir)
    assert sorted(map(product_key, back)) == sorted(map(product_key, native))
    back_images = {r["product_id"]: _image_sha(r["image_path"]) for r in back}
    for rec in native:
        image = _image_sha(rec["image_path"])
        if image is not None or fmt != "shopify":  # a Shopify variant without an image shows its product's
            assert back_images[rec["product_id"]] == image, rec["product_id"]


def test_shopify_variants_group_and_image_rows_are_images(tmp_path):
    header = ("Handle,Title,Body (HTML),Vendor,Type,Option1 Value,Variant SKU,Image Src,Image Position,"
              "Google Shopping / Gender,Google Shopping / Age Group,Variant Image\n")
    rows = [
        'blue-tee,Blue Tee,"<p>Soft <b>cotton</b> &amp; <script>x()</script>linen</p>",Acme,Men > Tops > T-shirts,S,,'
        'img/blue-1.jpg,1,male,adult,\n',
        "blue-tee,,,,,M,,,,,,\n",
        "blue-tee,,,,,,,img/blue-2.jpg,2,,,\n",  # an image row: not a product
        "red-dress,Red Dress,,Acme,Women > Dresses,One size,RD-1,,,female,adult,img/red.jpg\n",
        "ghost,,,,,,,img/ghost.jpg,1,,,\n",  # an image of no product
        "lonely,,,,,,,,,,,\n",  # a Handle and nothing else
    ]
    (tmp_path / "products.csv").write_text(header + "".join(rows))
    feed = load_feed(tmp_path / "products.csv", shop="acme")
    assert feed.format == "shopify"
    quarantine, counter = [], {"rows_in": 0}
    records = {r["product_id"]: r for _, r in checked_records(feed.adapter, feed.export_dir,
                                                              quarantine_to(quarantine, "acme"), counter)}
    assert sorted(records) == ["RD-1", "blue-tee-1", "blue-tee-2"]
    small, medium = records["blue-tee-1"], records["blue-tee-2"]
    assert small["group_id"] == medium["group_id"] == "blue-tee" and medium["title"] == "Blue Tee"
    assert small["description"] == "Soft cotton & linen" and medium["native_path"] == ["Men", "Tops", "T-shirts"]
    assert small["gender"] == medium["gender"] == "Men" and small["brand"] == "Acme"
    assert medium["image_path"] == str(tmp_path / "img" / "blue-1.jpg")  # the product's first image
    assert records["RD-1"]["image_path"] == str(tmp_path / "img" / "red.jpg") and records["RD-1"]["gender"] == "Women"
    reasons = sorted(q["reason"] for q in quarantine)
    assert reasons == ["image row of handle 'ghost', which has no product row",
                       "row of handle 'lonely' with no title, variant or image"]
    assert counter["rows_in"] == len(records) + len(quarantine)  # the image row of blue-tee is no row


GOOGLE_ITEM = ("<item><g:id>{id}</g:id><title>{title}</title><g:product_type>Women &gt; Dresses</g:product_type>"
               "<g:gender>female</g:gender><g:age_group>kids</g:age_group><g:item_group_id>g1</g:item_group_id>"
               "<g:image_link>{image}</g:image_link><g:shipping><g:country>US</g:country></g:shipping></item>")


def google_xml(items: str, prolog: str = "") -> str:
    return (f'<?xml version="1.0"?>{prolog}<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0"><channel>'
            f"{items}</channel></rss>")


def test_google_xml_items_and_outside_images(tmp_path):
    items = GOOGLE_ITEM.format(id="a1", title="Party dress", image="img/a1.jpg") + \
        GOOGLE_ITEM.format(id="a2", title="Other dress", image="../../etc/a2.jpg") + \
        GOOGLE_ITEM.format(id="a3", title="Third dress", image="file:///etc/passwd")
    (tmp_path / "feed.xml").write_text(google_xml(items))
    feed = load_feed(tmp_path / "feed.xml", fmt="google", shop="acme")
    records = [feed.adapter.to_record(row, feed.export_dir) for _, row, _ in feed.rows()]
    assert [r["product_id"] for r in records] == ["a1", "a2", "a3"]
    assert records[0]["native_path"] == ["Women", "Dresses"] and records[0]["gender"] == "Girls"
    assert records[0]["image_path"] == str(tmp_path / "img" / "a1.jpg") and "image_status" not in records[0]
    for rec in records[1:]:
        assert rec["image_path"] is None and rec["image_status"].startswith("outside export")


BILLION_LAUGHS = '<!DOCTYPE rss [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
EXTERNAL_ENTITY = '<!DOCTYPE rss [<!ENTITY x SYSTEM "file:///etc/passwd">]>'


@pytest.mark.parametrize("prolog", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_google_xml_with_a_dtd_is_refused_unexpanded(tmp_path, prolog):
    (tmp_path / "feed.xml").write_text(google_xml(GOOGLE_ITEM.format(id="a1", title="&b;", image=""), prolog))
    with pytest.raises(BadExport, match="refused"):
        list(load_feed(tmp_path / "feed.xml", fmt="google-xml", shop="acme").rows())


def test_google_xml_malformed_midway_quarantines_the_rest_and_wrong_root_is_refused(tmp_path):
    good = GOOGLE_ITEM.format(id="a1", title="Dress", image="")
    (tmp_path / "feed.xml").write_text(google_xml(good + "<item><g:id>a2</g:id><title>broken</item>"))
    rows = list(load_feed(tmp_path / "feed.xml", fmt="google-xml", shop="acme").rows())
    assert rows[0][1]["id"] == "a1" and rows[1][1] is None and rows[1][2].startswith("malformed XML from here on")
    (tmp_path / "other.xml").write_text('<catalog xmlns:g="http://base.google.com/ns/1.0"><item/></catalog>')
    with pytest.raises(BadExport, match="not an RSS 2.0"):
        list(load_feed(tmp_path / "other.xml", fmt="google-xml", shop="acme").rows())


def test_google_tsv_rows_are_lines_quotes_cannot_swallow_rows(tmp_path):
    text = ("id\ttitle\tproduct_type\timage_link\n"
            'a1\t"Quoted ""best"" dress"\tWomen > Dresses\t\n'
            'a2\t"unclosed quote\tWomen > Dresses\t\n'
            "a3\tthree\textra\tfields\ttoo many\n"
            "a4\tPlain dress\tWomen > Dresses\t\n")
    (tmp_path / "feed.tsv").write_text(text)
    rows = list(load_feed(tmp_path / "feed.tsv", shop="acme").rows())
    assert [r[0] for r in rows] == [2, 3, 4, 5]
    assert rows[0][1]["title"] == 'Quoted "best" dress' and rows[1][1]["title"] == '"unclosed quote'
    assert rows[2][1] is None and rows[2][2] == "malformed row: 5 fields, expected 4"
    assert rows[3][1]["id"] == "a4"


def test_jsonl_and_parquet_through_a_contract(tmp_path):
    lines = ['{"sku": 1, "name": "Blue shirt", "cats": ["Men", "Tops"]}', "{not json",
             '["a list"]', '{"sku": 3, "name": "No cats"}', '{"sku": 4.0, "name": "Red shirt", "cats": ["Men"]}']
    (tmp_path / "export.jsonl").write_text("\n".join(lines) + "\n")
    contract = "shop: acme\nfile: {file}\nformat: {fmt}\ncolumns:\n  id: sku\n  title: name\n  native_path: cats\n"
    (tmp_path / "acme.yaml").write_text(contract.format(file="export.jsonl", fmt="jsonl"))
    rows = list(load_feed(tmp_path / "acme.yaml").rows())
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[1][2].startswith("malformed JSON") and rows[2][2].startswith("malformed JSON: a line must hold")
    assert rows[3][2] == "missing fields ['cats']" and rows[4][1]["sku"] == "4"
    feed = load_feed(tmp_path / "acme.yaml")
    assert feed.adapter.to_record(rows[0][1], tmp_path)["native_path"] == ["Men", "Tops"]

    pd.DataFrame({"sku": ["0012", "0013"], "name": ["A", "B"], "cats": [["Men", "Tops"], ["Women"]]}) \
        .to_parquet(tmp_path / "export.parquet")
    (tmp_path / "acme.yaml").write_text(contract.format(file="export.parquet", fmt="parquet"))
    feed = load_feed(tmp_path / "acme.yaml")
    records = [feed.adapter.to_record(row, tmp_path) for _, row, _ in feed.rows()]
    assert [(r["product_id"], r["native_path"]) for r in records] == [("0012", ["Men", "Tops"]), ("0013", ["Women"])]
    (tmp_path / "acme.yaml").write_text(contract.format(file="export.parquet", fmt="parquet").replace("cats", "tree"))
    with pytest.raises(BadExport, match=r"missing required columns \['tree'\] \(found \['sku', 'name', 'cats'\]\)"):
        list(load_feed(tmp_path / "acme.yaml").rows())
