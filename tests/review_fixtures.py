"""Shared by tests/test_review.py and tests/test_review_browser.py: the sample's H&M Google feed onboarded once per
session as shop "hm" with the session's real two-stage models (conftest.two_stage_models), so its product ids are
the sample catalogue's and reviewed labels can be checked in the next catalogue materialisation."""
from pipelines.settings import DATA

FEED = DATA / "feeds" / "hm" / "google.tsv"
_DONE: dict = {}


def onboarded_hm(two_stage_models, tmp_path_factory):
    """The onboarding output folder (predictions.csv, products.parquet, label_first.csv, mapping.proposed.csv)."""
    if "out" not in _DONE:
        from pipelines.onboard.run import onboard_shop

        out = tmp_path_factory.mktemp("review_source") / "hm"
        onboard_shop("hm", FEED, "google-tsv", out, two_stage_models["settings"],
                     model_dir=two_stage_models["stage2_dir"], network=False,
                     progress=False)
        _DONE["out"] = out
    return _DONE["out"]
