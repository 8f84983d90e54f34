"""The shared taxonomy, the mapping tables into it, and accepting a new taxonomy version."""
import pandas as pd
import pytest

from pipelines.ingest.mapping import load_mapping
from pipelines.settings import MAPPINGS_DIR, PLATFORMS, SAMPLE_DIR, TAXONOMY_PATH
from pipelines.taxonomy.tree import load_taxonomy


def test_taxonomy_shape():
    tax = load_taxonomy()
    size = tax.size_per_level()
    assert tax.levels == ["department", "category", "type"]
    assert size["leaves"] >= 50
    assert ("Footwear", "Shoes") in tax.shallow and tax.is_leaf(("Footwear", "Shoes"))
    assert len(tax.shallow) >= 2
    assert not any(n[-1] in {"Men", "Women", "Boys", "Girls"} for n in tax.nodes)  # gender is an attribute


def test_same_name_under_two_parents_is_two_nodes(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("name: t\nversion: 1\nlevels: [a, b]\ntree:\n  X: [Other]\n  Y: [Other]\n")
    tax = load_taxonomy(p)
    assert ("X", "Other") in tax and ("Y", "Other") in tax and len(tax.leaves()) == 2


def test_duplicate_nodes_are_refused_by_name(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("name: t\nversion: 1\nlevels: [a, b]\ntree:\n  X: [Shoes, Shoes]\n  Y: [Other]\n")
    with pytest.raises(ValueError, match="duplicate taxonomy nodes.*X > Shoes"):
        load_taxonomy(p)


def test_mapping_tables_load_and_every_native_path_of_the_sample_has_a_rule():
    tax = load_taxonomy()
    for platform in PLATFORMS:
        table = load_mapping(MAPPINGS_DIR / f"{platform}.csv", tax)
        assert len(table.rules) >= 10 and any(r.category_path for r in table.rules)
    from pipelines.ingest.normalize import normalize_platform

    result = normalize_platform("myntra", SAMPLE_DIR / "myntra", taxonomy=tax, verify_images=False)
    assert not result.coverage["native_categories_not_in_table"]


def test_invalid_mapping_table_reports_every_bad_line_at_once(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("native_path,category_path,unmapped_reason\n"
                 "Men > Shoes,Footwear > Shoes,\n"
                 "Men > Rockets,Spaceware > Rockets,\n"  # not a taxonomy path
                 "Men > Hats,Accessories,out of scope: both given\n"
                 "Men > Shoes,Footwear,\n")  # duplicate rule
    with pytest.raises(ValueError) as err:
        load_mapping(p, load_taxonomy())
    message = str(err.value)
    assert "line 3: 'Spaceware > Rockets' is not a path" in message
    assert "line 4: give exactly one" in message and "line 5: duplicate rule 'Men > Shoes'" in message


def test_most_specific_rule_wins(tmp_path):
    tax = load_taxonomy()
    p = tmp_path / "m.csv"
    p.write_text("native_path,category_path,unmapped_reason\n"
                 "* > Footwear,Footwear,\n"
                 "* > Footwear > Shoes,Footwear > Shoes,\n"
                 "Men > Footwear > Shoes,Footwear > Shoes,\n"
                 "* > Personal Care,,out of scope: personal care\n")
    table = load_mapping(p, tax)
    assert table.lookup(["Women", "Footwear", "Shoes", "Heels"]).category_path == ("Footwear", "Shoes")
    assert table.lookup(["Men", "Footwear", "Shoes", "Heels"]).pattern[0] == "Men"
    assert table.lookup(["Women", "Footwear", "Sandal"]).category_path == ("Footwear",)
    assert table.lookup(["Women", "Personal Care", "Lips"]).unmapped_reason.startswith("out of scope")
    assert table.lookup(["Women", "Toys"]) is None


def _shoe_report(report_dir):
    """A recategorisation report of Footwear > Shoes over real sample products: clusters.csv + assignments."""
    from pipelines.ingest.normalize import normalize_platform

    products = normalize_platform("myntra", SAMPLE_DIR / "myntra", verify_images=False).products
    shoes = products[products["category_path"].map(tuple) == ("Footwear", "Shoes")].head(12)
    assignments = pd.DataFrame({"platform": shoes["platform"], "product_id": shoes["product_id"],
                                "title": shoes["title"], "cluster": [i % 2 for i in range(len(shoes))]})
    report_dir.mkdir()
    assignments.to_parquet(report_dir / "assignments.parquet", index=False)
    pd.DataFrame({"cluster_id": [0, 1], "name": ["Sneakers", "Formal Shoes"], "size": [6, 6]}).to_csv(
        report_dir / "clusters.csv", index=False)
    return report_dir


def test_accepting_clusters_relabels_every_assigned_product(tmp_path):
    from pipelines.taxonomy.versions import accept_from_report

    out = accept_from_report(_shoe_report(tmp_path / "report"), "Footwear > Shoes", [0], tmp_path / "v2.yaml",
                             taxonomy_path=TAXONOMY_PATH)
    assert out["products"] == 12 and out["per_path"] == {"Footwear > Shoes > Sneakers": 6, "Footwear > Shoes": 6}
    assert load_taxonomy(out["taxonomy"]).version == load_taxonomy().version + 1


def test_relabel_that_loses_a_product_raises_a_named_error(tmp_path, monkeypatch):
    """The count check is an exception, not an assert: it holds under python -O too."""
    from pipelines.taxonomy import versions

    relabel = versions.relabel
    monkeypatch.setattr(versions, "relabel", lambda *a, **k: relabel(*a, **k).iloc[1:])  # a bug dropping a row
    with pytest.raises(versions.RelabelCountError, match="11 products for 12 assigned"):
        versions.accept_from_report(_shoe_report(tmp_path / "report"), "Footwear > Shoes", [0], tmp_path / "v2.yaml",
                                    taxonomy_path=TAXONOMY_PATH)
