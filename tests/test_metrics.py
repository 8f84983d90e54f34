import numpy as np
import pytest

from pipelines.classify.metrics import evaluate, expected_calibration_error, hierarchical_prf
from pipelines.taxonomy.tree import load_taxonomy


def test_kiritchenko_by_hand():
    true = [("Clothing", "Tops", "T-Shirts"), ("Footwear", "Shoes")]
    pred = [("Clothing", "Tops", "Shirts"), ("Footwear", "Sandals & Slippers", "Sandals & Floaters")]
    m = hierarchical_prf(true, pred)
    # overlap 2 + 1 = 3; |pred| = 3 + 3; |true| = 3 + 2
    assert m["hP"] == pytest.approx(3 / 6) and m["hR"] == pytest.approx(3 / 5)


def test_same_leaf_name_under_two_parents_is_not_a_match():
    true, pred = [("Accessories", "Gloves", "Gloves")], [("Accessories", "Bags")]
    assert hierarchical_prf(true, pred)["hF1"] == pytest.approx(2 * (1 / 2 * 1 / 3) / (1 / 2 + 1 / 3))


def test_cross_check_with_hiclass_on_real_labels(sample_training):
    from hiclass.metrics import f1, precision, recall

    labels = sample_training["labels"]
    full = [p for p in labels if len(p) == 3][:300]
    rng = np.random.default_rng(0)
    tax = load_taxonomy()
    leaves = [l for l in tax.leaves() if len(l) == 3]
    pred = [p if rng.random() < 0.6 else leaves[rng.integers(len(leaves))] for p in full]
    ours = hierarchical_prf(full, pred)
    # node ids unique by path for hiclass: prefix each level with its ancestors
    uniq = lambda ps: np.array([[" > ".join(p[:i + 1]) for i in range(3)] for p in ps])
    assert ours["hP"] == pytest.approx(precision(uniq(full), uniq(pred)))
    assert ours["hR"] == pytest.approx(recall(uniq(full), uniq(pred)))
    assert ours["hF1"] == pytest.approx(f1(uniq(full), uniq(pred)))


def test_ece_and_consistency():
    assert expected_calibration_error([0.9, 0.9], [1, 1]) == pytest.approx(0.1)
    tax = load_taxonomy()
    m = evaluate([("Clothing", "Tops")], [("Clothing", "Tops", "Shirts")], tax, confidence=[0.5])
    assert m["consistency"] == 1.0 and m["hF1"] == 1.0 and m["strict_hF1"] < 1.0
    assert evaluate([("Clothing",)], [("Clothing", "Nope")], tax)["consistency"] == 0.0
