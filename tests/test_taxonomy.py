from pipelines.ingest.mapping import load_mapping
from pipelines.settings import MAPPINGS_DIR, PLATFORMS
from pipelines.taxonomy.tree import load_taxonomy


def test_taxonomy_shape():
    tax = load_taxonomy()
    size = tax.size_per_level()
    assert tax.levels == ["department", "category", "type"]
    assert size["leaves"] >= 50
    assert len(set(tax.nodes)) == len(tax.nodes)
    assert ("Footwear", "Shoes") in tax.shallow and tax.is_leaf(("Footwear", "Shoes"))
    assert len(tax.shallow) >= 2
    assert not any(n[-1] in {"Men", "Women", "Boys", "Girls"} for n in tax.nodes)  # gender is an attribute


def test_same_name_under_two_parents_is_two_nodes(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("name: t\nversion: 1\nlevels: [a, b]\ntree:\n  X: [Other]\n  Y: [Other]\n")
    tax = load_taxonomy(p)
    assert ("X", "Other") in tax and ("Y", "Other") in tax and len(tax.leaves()) == 2


def test_mapping_tables_load_and_target_valid_paths():
    tax = load_taxonomy()
    for platform in PLATFORMS:
        table = load_mapping(MAPPINGS_DIR / f"{platform}.csv", tax)
        assert table.rules
        assert all(r.unmapped_reason or tax.is_valid_path(r.category_path) for r in table.rules)


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
