"""Onboarding a new shop from its feed, with no code and no labels (issue 17).

    products.py          the feed (or a registered shop's export) -> unlabelled products + quarantine
    classifier.py        a stand-in for the champion trained on other shops only (leave-one-platform-out measurement)
    scope.py             out-of-scope detection: products that belong nowhere in the fashion taxonomy
    mapping_proposal.py  the proposed mapping table (native category -> taxonomy path or unmapped reason); accept it
    label_first.py       the products to label first (uncertain, one per group, round-robin over level-2 nodes)
    run.py               `prodcat onboard`: normalise, classify, flag, propose, report
    report.py            the onboarding report (Markdown + self-contained HTML)
    evaluate.py          scoring a proposal and a detector against a hand-written mapping (labels enter only here)
    measure.py           `prodcat onboard measure`: the issue's targets, leave-one-platform-out

Honest protocol (issue 18): everything up to the proposal reads an unlabelled frame (products.require_unlabelled
refuses one with a label column); thresholds are chosen on the training shops' validation rows or fixed a priori.
"""
