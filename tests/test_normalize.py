"""Adapters + normalisation on the real sample and on deliberately broken copies of it."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipelines.ingest.catalogue import read_products
from pipelines.ingest.normalize import normalize_platform
from pipelines.ingest.shops import BadExport
from pipelines.settings import PLATFORMS, ROOT, SAMPLE_DIR
from pipelines.taxonomy.tree import load_taxonomy


def count_records(path: Path) -> int:
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        return sum(1 for _ in csv.reader(f)) - 1


@pytest.mark.parametrize("platform", PLATFORMS)
def test_sample_counts_add_up_and_paths_are_valid(platform):
    from pipelines.ingest.shops import get_adapter

    result = normalize_platform(platform, SAMPLE_DIR / platform)
    cov = result.coverage
    rows_in = count_records(SAMPLE_DIR / platform / get_adapter(platform).EXPORT_FILE)
    assert cov["rows_in"] == rows_in
    assert len(result.products) + len(result.quarantine) == rows_in
    assert result.quarantine["reason"].str.len().gt(0).all()
    tax = load_taxonomy()
    assert result.products["category_path"].map(tax.is_valid_path).all()
    assert result.products.groupby("product_id").size().max() == 1
    assert cov["fashion_mapped_share"] >= 0.95
    # a group never straddles two splits
    assert result.products.groupby("group_id")["split"].nunique().max() == 1
    assert set(result.products["split"]) == {"train", "val", "test"}


def test_hm_ids_keep_leading_zero_and_images_resolve():
    products = normalize_platform("hm", SAMPLE_DIR / "hm").products
    assert products["product_id"].str.startswith("0").all()
    assert (products["image_status"] == "ok").mean() > 0.99
    assert products["image_path"].dropna().map(lambda p: Path(p).is_file()).all()


def test_flipkart_tree_parsed_and_out_of_scope_quarantined_with_reason():
    result = normalize_platform("flipkart", SAMPLE_DIR / "flipkart")
    assert result.products["image_path"].isna().all()
    assert result.products["native_path"].map(len).min() >= 2
    out_of_scope = result.quarantine[result.quarantine["reason"].str.startswith("unmapped: out of scope")]
    assert len(out_of_scope) > 100  # ~40% of Flipkart is not fashion at all
    assert result.coverage["unmapped_by_reason"]


@pytest.fixture
def broken_myntra(tmp_path):
    src = SAMPLE_DIR / "myntra"
    dst = tmp_path / "myntra"
    shutil.copytree(src, dst)
    lines = (src / "styles.csv").read_bytes().splitlines(keepends=True)
    header, rows = lines[0], lines[1:41]
    first_id = rows[0].split(b",")[0]
    bad = [
        b"99000001,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Extra,Field,Here\n",  # malformed
        b"99000002,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Caf\xe9 Shirt \xff\n",  # not UTF-8
        b"99000003,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,\n",  # empty title
        first_id + b",Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Duplicate Of First\n",  # duplicate id
        b"99000005,Men,Spaceware,Rockets,Jetpacks,Blue,Summer,2012,Casual,Acme Jetpack\n",  # unknown category
        b"99000006,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Truncated Image Tee\n",
        b"99000007,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,No Image Tee\n",
    ]
    (dst / "styles.csv").write_bytes(header + b"".join(rows) + b"".join(bad))
    good_jpeg = next((dst / "images").glob("*.jpg")).read_bytes()
    (dst / "images" / "99000006.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])  # truncated
    return dst


def test_bad_rows_are_quarantined_with_reasons(broken_myntra):
    result = normalize_platform("myntra", broken_myntra)
    q = result.quarantine.set_index("line")["reason"]
    reasons = " | ".join(q)
    assert "malformed row" in reasons
    assert "non-UTF-8" in reasons
    assert "empty title" in reasons
    assert "duplicate id" in reasons
    assert "unknown native category: Men > Spaceware > Rockets > Jetpacks" in reasons
    assert result.coverage["rows_in"] == 47 == len(result.products) + len(result.quarantine)
    by_id = result.products.set_index("product_id")
    assert by_id.loc["99000006", "image_status"].startswith("corrupt")
    assert pd.isna(by_id.loc["99000006", "image_path"])
    assert by_id.loc["99000007", "image_status"] == "missing"


def test_missing_columns_named_in_error(tmp_path):
    d = tmp_path / "hm"
    d.mkdir()
    (d / "articles.csv").write_text("article_id,prod_name\n0100,Tee\n")
    with pytest.raises(BadExport, match="product_code"):
        normalize_platform("hm", d)


def test_cli_normalize_writes_outputs_and_reports_errors_cleanly(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "orchestration.cli", "normalize", "--platform", "hm",
                          "--input", str(SAMPLE_DIR / "hm"), "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    products = read_products(out / "products.parquet")
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    assert "reason" in quarantine.columns and len(products) > 500
    assert isinstance(products["category_path"].iloc[0], list)
    bad = subprocess.run([sys.executable, "-m", "orchestration.cli", "normalize", "--platform", "hm",
                          "--input", str(tmp_path / "nowhere"), "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "does not exist" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("platform", PLATFORMS)
def test_full_benchmark_counts_add_up_and_fashion_is_mapped(platform):
    from pipelines.settings import BENCHMARK_DIR
    from pipelines.ingest.shops import get_adapter

    src = BENCHMARK_DIR / platform
    result = normalize_platform(platform, src, verify_images=False)  # image decoding is covered on the sample
    rows_in = count_records(src / get_adapter(platform).EXPORT_FILE)
    assert result.coverage["rows_in"] == rows_in == len(result.products) + len(result.quarantine)
    assert result.coverage["fashion_mapped_share"] >= 0.95
    assert result.quarantine["reason"].str.len().gt(0).all()


def _hm_export(dst: Path, edit) -> Path:
    """The sample's first three H&M rows, passed through `edit(header, rows)`, as a real articles.csv."""
    with (SAMPLE_DIR / "hm" / "articles.csv").open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))[:4]
    dst.mkdir(parents=True)
    with (dst / "articles.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *edit(header, rows)])
    return dst


def _all_bad(header, rows):
    rows[0][header.index("prod_name")] = ""  # empty title
    rows[1][header.index("product_group_name")] = "Spaceware"  # no mapping rule
    return [rows[0], rows[1], rows[2][:5]]  # malformed: 5 fields


def test_export_with_every_row_quarantined_writes_empty_outputs_and_says_why(tmp_path):
    import pyarrow.parquet as pq

    from pipelines.ingest.normalize import product_schema

    src, out = _hm_export(tmp_path / "hm", _all_bad), tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "orchestration.cli", "normalize", "--platform", "hm",
                          "--input", str(src), "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert pq.read_schema(out / "products.parquet").remove_metadata() == product_schema()
    assert len(read_products(out / "products.parquet")) == 0
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    assert sorted(quarantine["reason_kind"]) == ["empty title", "malformed row", "unknown native category"]
    coverage = json.loads((out / "coverage.json").read_text())
    assert coverage["rows_in"] == 3 == coverage["rows_quarantined"] and coverage["rows_normalised"] == 0
    assert "all 3 rows were quarantined" in coverage["warnings"][0] and "malformed row (1)" in coverage["warnings"][0]


ROW_LOST = """
import sys
import pipelines.ingest.normalize as n
from pipelines.settings import SAMPLE_DIR

rows = n.checked_records
def losing_one(*args, **kwargs):  # a bug that drops a row without quarantining it
    for i, item in enumerate(rows(*args, **kwargs)):
        if i != 5:
            yield item
n.checked_records = losing_one
try:
    n.normalize_platform("hm", SAMPLE_DIR / "hm", verify_images=False)
except n.RowCountMismatch as e:
    print(e)
    sys.exit(0)
sys.exit(1)
"""


def test_row_count_invariant_is_checked_under_python_O():
    run = subprocess.run([sys.executable, "-O", "-c", ROW_LOST], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "rows read but" in run.stdout


def test_csv_field_limit_is_bounded_and_not_set_at_import(tmp_path):
    probe = ("import csv; before = csv.field_size_limit(); import pipelines.ingest.shops, pipelines.ingest.normalize; "
             "print(before, csv.field_size_limit())")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    before, after = run.stdout.split()
    assert before == after, "importing the ingest package changed the process-wide CSV field limit"

    def long_fields(header, rows):
        rows[0][header.index("detail_desc")] = "soft cotton " * 90_000  # ~1 MB: over Python's 128 KiB default
        rows[1][header.index("detail_desc")] = "x" * (17 * 1024 * 1024)  # over the 16 MiB bound
        return rows

    from pipelines.ingest.shops import MAX_FIELD_BYTES

    result = normalize_platform("hm", _hm_export(tmp_path / "hm", long_fields), verify_images=False)
    assert MAX_FIELD_BYTES == 16 * 1024 * 1024
    assert len(result.products) == 2 and result.products["description"].str.len().max() > 1_000_000
    # the oversized record is quarantined with its line, and reading goes on after it (it used to stop there)
    assert result.quarantine["reason"].tolist() == [
        f"malformed CSV: field larger than field limit ({MAX_FIELD_BYTES}) (line 3)"]
    with (SAMPLE_DIR / "hm" / "articles.csv").open(newline="", encoding="utf-8") as f:
        sample_ids = [row[0] for row in list(csv.reader(f))[1:4]]
    assert result.products["product_id"].tolist() == [sample_ids[0], sample_ids[2]]
