"""The two UIs in a real browser (Debian's chromium driven by Playwright): Dagster lists the graph and its checks
and materialises an asset from a button click; MLflow shows the registered model and its `champion` alias.

Chromium comes from `scripts/install_browser.sh` (CI runs it before `make test`); a missing browser fails the test.
Screenshots go to the test's tmp dir and to work/screenshots/ for humans.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipelines.settings import PLATFORMS, ROOT, SAMPLE_DIR, Settings

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BIN = Path(sys.executable).parent
SCREENSHOTS = ROOT / "work" / "screenshots"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def stop_group(proc: subprocess.Popen, grace: float = 10.0):
    """SIGTERM the server's whole process group (webserver, daemon, code server, run workers), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # leader gone: make sure no child outlives it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


@contextmanager
def server(cmd: list, ready_url: str, log: Path, env: dict, cwd: Path, timeout: float = 300):
    """Start a server in its own process group; yield once `ready_url` answers 200; always stop it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, lambda: wait_until(lambda: http_ok(ready_url), timeout, f"{cmd[0]} at {ready_url}", proc, log)
    finally:
        stop_group(proc)


def wait_until(condition, timeout: float, what: str, proc=None, log: Path | None = None):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        result = condition()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise AssertionError(f"{what} not ready after {time.monotonic() - start:.0f}s\n{tail}")


def graphql(base: str, query: str) -> dict:
    req = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.loads(r.read())
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture
def browser_page():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install_browser.sh` (CI does, before `make test`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)
    return path


def _server_env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PRODCAT_QUIET="1", **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _materialise_platforms(home: Path, work: Path):
    """What `catalogue` reads - normalized_products for every platform and the (empty) reviewed_labels - in
    process, into the instance the UI serves."""
    from dagster import DagsterInstance

    from orchestration.definitions import build_definitions
    from orchestration.runners import run_in_process

    defs = build_definitions(Settings(data_root=str(SAMPLE_DIR), work_dir=str(work)))
    with DagsterInstance.from_config(str(home)) as instance:
        for platform in PLATFORMS:
            checks = run_in_process(defs, ("normalized_products",), instance,
                               platform).get_asset_check_evaluations()
            assert checks and all(c.passed for c in checks)
        run_in_process(defs, ("reviewed_labels",), instance)


LATEST_CATALOGUE = '{ assetOrError(assetKey: {path: ["catalogue"]}) { ... on Asset { ' \
                   'assetMaterializations(limit: 1) { runId } } } }'


def test_dagster_ui_lists_graph_and_materialises_from_a_click(tmp_path, browser_page):
    home, work, port = tmp_path / "dagster_home", tmp_path / "work", free_port()
    home.mkdir()
    shutil.copy(ROOT / "orchestration" / "dagster.yaml", home / "dagster.yaml")
    base = f"http://127.0.0.1:{port}"
    env = _server_env(DAGSTER_HOME=str(home), PRODCAT_DATA=str(SAMPLE_DIR), PRODCAT_WORK=str(work))
    cmd = [str(BIN / "dagster"), "dev", "-m", "orchestration.definitions", "-h", "127.0.0.1", "-p", str(port)]
    _materialise_platforms(home, work)  # before the server: both would create the sqlite schema at once
    with server(cmd, f"{base}/server_info", tmp_path / "dagster.log", env, ROOT) as (_, wait_ready):
        wait_ready()
        wait_until(lambda: graphql(base, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }")
                   ["workspaceOrError"]["locationEntries"][0]["loadStatus"] == "LOADED", 120, "code location")

        page = browser_page
        page.add_locator_handler(page.get_by_text("Join the Dagster community"),  # first-visit newsletter modal
                                 lambda _: page.get_by_role("button", name="Skip").click())
        page.goto(f"{base}/locations/orchestration.definitions/asset-groups/catalogue/lineage")
        for name in ("raw_export", "normalized_products", "catalogue", "splits"):
            page.get_by_text(name, exact=True).first.wait_for()
        page.get_by_text("3 partitions").first.wait_for()  # live partition status of normalized_products
        screenshot(page, tmp_path, "dagster_catalogue_lineage")

        page.goto(f"{base}/assets/normalized_products?view=checks")
        page.get_by_text("gx_products_suite").first.wait_for()
        page.get_by_text("Passed", exact=True).first.wait_for()  # the blocking GX check ran on the real sample
        assert page.get_by_text("This is a blocking asset check.").is_visible()
        screenshot(page, tmp_path, "dagster_gx_check")

        assert not graphql(base, LATEST_CATALOGUE)["assetOrError"]["assetMaterializations"]
        page.goto(f"{base}/assets/catalogue")
        page.get_by_text("Never materialized").first.wait_for()
        page.locator("button").filter(has_text=re.compile(r"^Materialize$")).click()
        page.get_by_text("Launched run").wait_for()
        latest = wait_until(lambda: graphql(base, LATEST_CATALOGUE)["assetOrError"]["assetMaterializations"], 150,
                            "catalogue materialisation")
        run_status = '{ runOrError(runId: "%s") { ... on Run { status } } }' % latest[0]["runId"]
        status = wait_until(lambda: {"SUCCESS", "FAILURE", "CANCELED"} & {
            graphql(base, run_status)["runOrError"]["status"]}, 60, "run end")
        assert status == {"SUCCESS"}

        from pipelines.ingest.catalogue import read_products

        rows = len(read_products(work / "assets" / "catalogue" / "all.parquet"))
        page.goto(f"{base}/assets/catalogue")
        page.get_by_text("Latest materialization").wait_for()
        page.locator("td").filter(has_text=re.compile(rf"^{rows}$")).first.wait_for()  # metadata `rows` shown
        assert page.get_by_text("Never materialized").count() == 0
        screenshot(page, tmp_path, "dagster_catalogue_materialized")


def _log_tiny_model(val_hf1: float) -> str:
    """A real (tiny) fitted model: logistic regression on toy features, stored as plain files like prodcat's."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.array([[0.0, 1.0], [0.2, 0.9], [1.0, 0.1], [0.9, 0.0]])
    model = LogisticRegression().fit(x, ["Apparel", "Apparel", "Footwear", "Footwear"])
    with mlflow.start_run(run_name="tiny") as run:
        mlflow.log_metric("val_hF1", val_hf1)
        mlflow.log_dict({"coef": model.coef_.tolist(), "intercept": model.intercept_.tolist(),
                         "classes": model.classes_.tolist()}, "model/weights.json")
    return run.info.run_id


def _close_assistant_panel(page):
    """MLflow 3 opens an assistant side panel on first visit; closing it leaves the registry readable."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_text("MLflow Assistant").first.wait_for(timeout=5_000)
    except PlaywrightTimeout:
        return  # no panel (older/newer MLflow): nothing to close
    for button in page.get_by_role("button", name="Close", exact=True).all():
        if button.is_visible():
            button.click()


def test_mlflow_ui_shows_registered_champion(tmp_path, browser_page):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlruns.db'}",
           "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    # job execution (GenAI jobs) would start six huey workers this test does not need
    env = _server_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with server(cmd, f"{base}/health", tmp_path / "mlflow.log", env, tmp_path) as (_, wait_ready):
        wait_ready()
        import mlflow

        from pipelines.classify.registry import REGISTERED_MODEL, register_champion

        mlflow.set_tracking_uri(base)
        mlflow.set_experiment("prodcat")
        assert register_champion(_log_tiny_model(0.5), 0.5, tracking_uri=base)  # version 1 becomes champion
        assert not register_champion(_log_tiny_model(0.4), 0.4, tracking_uri=base)  # version 2 is worse: alias stays

        page = browser_page
        # first visit of the registry: a "new Model Registry UI" announcement modal covers the page
        page.add_locator_handler(page.get_by_text("Flexible, governed deployments"),
                                 lambda _: page.get_by_role("button", name="Try it now").click())
        page.goto(f"{base}/#/models")
        row = page.get_by_role("row").filter(has_text=REGISTERED_MODEL)
        row.wait_for()
        _close_assistant_panel(page)
        assert re.search(r"@\s*champion\s*:\s*Version 1", row.inner_text()), row.inner_text()
        screenshot(page, tmp_path, "mlflow_models")

        page.goto(f"{base}/#/models/{REGISTERED_MODEL}")
        version_1, version_2 = (page.get_by_role("row", name=re.compile(rf"^Version {v}\b")) for v in (1, 2))
        version_1.wait_for()
        alias = re.compile(r"@\s*champion\b")  # the alias chip (version tags also mention "champion_decision")
        assert alias.search(version_1.inner_text()) and "0.500000" in version_1.inner_text(), version_1.inner_text()
        assert not alias.search(version_2.inner_text()), version_2.inner_text()
        assert "not promoted" in version_2.inner_text()  # the recorded decision, shown as a version tag
        screenshot(page, tmp_path, "mlflow_champion")
