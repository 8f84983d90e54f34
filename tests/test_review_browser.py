"""The review loop end to end in a real browser (Debian's chromium driven by Playwright), as issue 20's "done when":
`prodcat serve --review` on the sample's onboarded H&M feed shows the three queues; ten products are reviewed with
the keyboard, two of them corrected through the taxonomy search; the decision table holds all ten; the next
materialisation of `reviewed_labels` + `catalogue` (the training data) carries the two corrections.
The screenshot of the page goes to work/screenshots/review_page.png; docs/review_page.png (the README shows it) is a
copy of one, committed."""
import json
import shutil
import sys

import pytest

from pipelines.settings import PLATFORMS, ROOT, Settings
from review_fixtures import onboarded_hm
from test_browser import _server_env, browser_page, free_port, screenshot, server  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser
QUEUE = "label_first"


def _state(page) -> dict:
    return json.loads(page.locator("#state").text_content())


def _press(page, key: str):
    """A key that ends in a page load (a decision, or j/k); the page's message if it does not."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        with page.expect_navigation(timeout=30_000):
            page.keyboard.press(key)
    except PlaywrightTimeout:
        raise AssertionError(f"{key!r} did not move on: {page.locator('#msg').text_content()!r}") from None
    page.locator("#state").wait_for(state="attached")


def _correction(label: list, predicted: str, leaves: list) -> str:
    """A plausible correction that changes the label: a sibling of the catalogue's label (another leaf under the
    same parent), else any other leaf."""
    current = " > ".join(label)
    parent = " > ".join(label[:-1]) + " > "
    siblings = [leaf for leaf in leaves if leaf.startswith(parent) and leaf not in (current, predicted)]
    return (siblings or [leaf for leaf in leaves if leaf not in (current, predicted)])[0]


def _review_ten(page, labels: dict, leaves: list, tmp_path) -> tuple[list, dict]:
    """Accept eight products with `a`, correct two (catalogue products) with `c`, a search and Enter."""
    reviewed, corrections = [], {}
    for n in range(10):
        state = _state(page)
        item = state["item_id"]
        assert item not in reviewed  # the page moves on to the next undecided product
        if len(corrections) < 2 and item in labels and n >= 2:
            target = _correction(labels[item], state["predicted"], leaves)
            page.keyboard.press("c")
            page.keyboard.type(target.split(" > ")[-1].lower())  # search by name, arrows to the node
            for _ in range(40):
                if page.locator("#nodes li.hl").text_content() == target:
                    break
                page.keyboard.press("ArrowDown")
            assert page.locator("#nodes li.hl").text_content() == target
            if not corrections:
                screenshot(page, tmp_path, "review_page")  # also to work/screenshots/ (docs/review_page.png is a copy)
            _press(page, "Enter")
            corrections[item] = target
        else:
            _press(page, "a")
        reviewed.append(item)
    return reviewed, corrections


def _materialise_training_data(sample_work, work):
    """normalized_products (copied from the session's materialisation), then reviewed_labels + catalogue through
    Dagster (dagster.materialize, in process) into `work`."""
    from dagster import DagsterInstance

    from orchestration.definitions import build_definitions
    from orchestration.runners import run_in_process
    from pipelines.ingest.catalogue import read_products

    shutil.copytree(sample_work["work"] / "assets" / "normalized_products", work / "assets" / "normalized_products")
    defs = build_definitions(Settings(data_root=sample_work["raw"], work_dir=work, quiet=True))
    with DagsterInstance.ephemeral() as instance:
        result = run_in_process(defs, ("reviewed_labels", "catalogue"), instance)
        assert result.success
    return read_products(work / "assets" / "catalogue" / "all.parquet")


def test_review_ten_products_with_the_keyboard(two_stage_models, sample_work, tmp_path_factory, tmp_path,
                                               browser_page):
    from pipelines.ingest.catalogue import read_products
    from pipelines.review.queues import QUEUE_LABELS
    from pipelines.review.store import DecisionStore, default_review_db
    from pipelines.taxonomy.tree import load_taxonomy

    source = onboarded_hm(two_stage_models, tmp_path_factory)
    work = tmp_path / "work"
    db = default_review_db(work)  # where the next materialisation in `work` reads the decisions
    catalogue = read_products(sample_work["work"] / "assets" / "catalogue" / "all.parquet")
    hm = catalogue[catalogue["platform"] == "hm"]
    labels = dict(zip(hm["product_id"], hm["category_path"]))
    taxonomy = load_taxonomy()
    leaves = [" > ".join(leaf) for leaf in taxonomy.leaves()]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = _server_env(PRODCAT_WORK=str(two_stage_models["work"]), PRODCAT_DATA=str(two_stage_models["raw"]))
    cmd = [sys.executable, "-m", "orchestration.cli", "serve", "--port", str(port), "--model",
           str(two_stage_models["stage2_dir"]), "--review", str(source), "--review-db", db]
    with server(cmd, f"{base}/ready", tmp_path / "serve.log", env, ROOT, timeout=900) as (_, wait_ready):
        wait_ready()
        page = browser_page
        page.goto(f"{base}/review")
        for label in QUEUE_LABELS.values():  # the three queues, with progress
            page.get_by_text(label).wait_for()
        assert page.get_by_text("0 / ").count() == 3
        page.goto(f"{base}/review/{QUEUE}")
        first = _state(page)
        page.fill("#reviewer", "ana")
        page.locator("h1").click()  # out of the name field: keys act on the page
        _press(page, "j")
        assert _state(page)["index"] == first["index"] + 1
        assert page.input_value("#reviewer") == "ana"  # the name is kept (cookie) from page to page
        _press(page, "k")
        assert _state(page)["item_id"] == first["item_id"]
        reviewed, corrections = _review_ten(page, labels, leaves, tmp_path)
        assert len(corrections) == 2
        page.goto(f"{base}/review")
        page.get_by_text("10 / ").first.wait_for()
        screenshot(page, tmp_path, "review_queues")

    store = DecisionStore(db, taxonomy)
    latest = store.latest(QUEUE).set_index("item_id")
    store.close()
    assert sorted(latest.index) == sorted(reviewed) and set(latest["reviewer"]) == {"ana"}
    assert (latest["decision"] == "correct").sum() == 2 and (latest["decision"] == "accept").sum() == 8
    for item, target in corrections.items():
        assert latest.loc[item, "path"] == target and latest.loc[item, "predicted_path"] != target
    accepted = latest[latest["decision"] == "accept"]
    assert (accepted["path"] == accepted["predicted_path"]).all() and latest["model_version"].str.len().min() > 0

    trained_on = _materialise_training_data(sample_work, work).set_index("uid")["category_path"]
    assert len(trained_on) == len(catalogue)
    for item, target in corrections.items():
        assert " > ".join(trained_on[f"hm:{item}"]) == target != " > ".join(labels[item])
    for item, row in accepted.iterrows():
        if f"hm:{item}" in trained_on.index:
            assert " > ".join(trained_on[f"hm:{item}"]) == row["path"]
    untouched = [u for u in trained_on.index if u.split(":", 1)[1] not in latest.index][:50]
    by_uid = catalogue.set_index("uid")["category_path"]
    assert all(list(trained_on[u]) == list(by_uid[u]) for u in untouched)
    assert {u.split(":", 1)[0] for u in trained_on.index} == set(PLATFORMS)  # every shop still trains
