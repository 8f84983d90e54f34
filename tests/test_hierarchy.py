"""Dynamic masking and best-valid-path decoding."""
import torch

from models.fusion import build_fusion
from models.hierarchy import Hierarchy
from pipelines.taxonomy.tree import load_taxonomy


def hierarchy():
    tax = load_taxonomy()
    return tax, Hierarchy(tax.nodes, tax.depth)


def test_every_decoded_path_is_a_valid_leaf_path_even_for_adversarial_logits():
    tax, h = hierarchy()
    torch.manual_seed(0)
    logits = [torch.randn(200, n) * 20 for n in h.sizes]
    # adversarial: level 3 strongly prefers a child of a department the level-1 head rejects
    logits[0][:, 0] += 50
    logits[2][:, h.index[2][("Jewellery", "Rings", "Rings")]] += 100
    best, conf, prob = h.decode(logits)
    paths = [h.leaves[i] for i in best]
    assert all(tax.is_valid_path(p) and tax.is_leaf(p) for p in paths)
    greedy = h.greedy(logits)
    assert any(not tax.is_valid_path(g[:2]) or not tax.is_valid_path(g) for g in greedy)  # greedy breaks paths
    assert ((conf[~torch.isnan(conf)] >= 0) & (conf[~torch.isnan(conf)] <= 1)).all()
    assert torch.all(prob <= 1 + 1e-6)


def test_leaf_distribution_sums_to_one_and_shallow_leaves_are_reachable():
    _, h = hierarchy()
    logits = [torch.randn(3, n) for n in h.sizes]
    scores = h.leaf_scores(h.conditional_log_probs(logits)).exp()
    assert torch.allclose(scores.sum(1), torch.ones(3), atol=1e-5)
    shoes = h.leaves.index(("Footwear", "Shoes"))
    logits = [torch.zeros(1, n) for n in h.sizes]
    logits[0][0, h.index[0][("Footwear",)]] = 10
    logits[1][0, h.index[1][("Footwear", "Shoes")]] = 10
    best, conf, _ = h.decode(logits)
    assert best.item() == shoes and torch.isnan(conf[0, 2])


def test_best_path_beats_greedy_on_a_constructed_case():
    _, h = hierarchy()
    logits = [torch.full((1, n), -20.0) for n in h.sizes]
    a, b = h.index[0][("Clothing",)], h.index[0][("Jewellery",)]
    logits[0][0, a], logits[0][0, b] = 0.1, 0.0  # greedy level 1 picks Clothing by a hair...
    # ...but Clothing's categories are all unsure while Jewellery > Earrings > Earrings is certain
    for n, i in h.index[1].items():
        if n[0] == "Clothing":
            logits[1][0, i] = 0.0
    logits[1][0, h.index[1][("Jewellery", "Earrings")]] = 10
    for n, i in h.index[2].items():
        logits[2][0, i] = 0.0
    logits[2][0, h.index[2][("Jewellery", "Earrings", "Earrings")]] = 10
    best, _, _ = h.decode(logits)
    assert h.leaves[best.item()] == ("Jewellery", "Earrings", "Earrings")


def test_masked_loss_trains_only_the_levels_a_label_has():
    _, h = hierarchy()
    logits = [torch.randn(2, n, requires_grad=True) for n in h.sizes]
    labels = torch.tensor([h.encode(("Clothing", "Tops")), h.encode(("Footwear", "Shoes"))])
    assert labels[:, 2].tolist() == [-1, -1]
    h.masked_nll(logits, labels).backward()
    assert (logits[2].grad is None or logits[2].grad.abs().sum() == 0) and logits[1].grad.abs().sum() > 0
    # only siblings under the true parent receive gradient at level 2 (dynamic masking in training)
    tops_parent = h.parent[1] == h.index[0][("Clothing",)]
    assert logits[1].grad[0, ~tops_parent].abs().sum() == 0


def test_missing_modality_is_masked_not_read():
    torch.manual_seed(0)
    dims = {"text": 8, "image": 6}
    for fusion in ("early", "late", "attention", "unimodal"):
        cfg = {"fusion": fusion, "modalities": ["image"] if fusion == "unimodal" else ["text", "image"],
               "hidden": 16, "dropout": 0.0, "heads": 2}
        f = build_fusion(cfg, dims).eval()
        x = {"text": torch.randn(4, 8), "image": torch.randn(4, 6)}
        avail = {"text": torch.ones(4, dtype=torch.bool), "image": torch.tensor([True, False, False, True])}
        garbage = dict(x, image=x["image"].clone())
        garbage["image"][1:3] = torch.tensor(float("nan"))
        garbage["image"][2] = 1e6
        with torch.no_grad():
            a, b = f(x, avail), f(garbage, avail)
        assert torch.allclose(a[1:3], b[1:3]), fusion
        assert torch.isfinite(b).all()
