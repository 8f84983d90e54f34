"""`prodcat serve` as a real uvicorn process on a free port, exercised with a real HTTP client (httpx)."""
import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipelines.taxonomy.tree import load_taxonomy

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(two_stage_models, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PRODCAT_WORK": str(two_stage_models["work"]), "PRODCAT_DATA": str(two_stage_models["raw"]),
           "PRODCAT_QUIET": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "serve", "--port", str(port), "--model",
                                 str(two_stage_models["stage2_dir"])], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                pytest.fail(f"server not up after 180 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def sample_image_b64() -> str:
    image = sorted((ROOT / "data" / "sample" / "myntra" / "images").glob("*.jpg"))[0]
    return base64.b64encode(image.read_bytes()).decode()


def test_health_taxonomy_openapi(server):
    health = server.get("/health").json()
    assert health["status"] == "ok" and health["mode"] == "routed" and 0 <= health["threshold"] <= 1.01
    assert server.get("/ready").json()["status"] == "ready"
    for path in ("/health", "/ready"):  # load balancers probe with HEAD (was 405)
        head = server.head(path)
        assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "application/json"
    tax = server.get("/taxonomy").json()
    assert len(tax["leaves"]) == len(load_taxonomy().leaves()) and tax["levels"]
    spec = server.get("/openapi.json").json()
    assert {"/classify", "/taxonomy", "/health", "/ready"} <= set(spec["paths"])
    assert "Product" in spec["components"]["schemas"] and "Batch" in spec["components"]["schemas"]


def test_classify_one_and_batch(server):
    taxonomy = load_taxonomy()
    one = server.post("/classify", json={"title": "Puma Men Black Running Sports Shoes", "brand": "Puma"})
    assert one.status_code == 200, one.text
    r = one.json()
    assert taxonomy.is_valid_path(r["full_path"]) and r["full_path"][:len(r["category_path"])] == r["category_path"]
    assert r["stage"] in (1, 2) and set(r["confidence"]) == {"L1", "L2", "L3"}
    batch = server.post("/classify", json={"products": [
        {"product_id": "a", "title": "Nike Women White Printed T-shirt"},
        {"product_id": "b", "title": "Levis Men Blue Slim Fit Jeans", "description": "stretch denim, five pockets"},
        {"product_id": "c", "title": "Fastrack Unisex Black Dial Analog Watch", "image_base64": sample_image_b64()},
    ]})
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [x["product_id"] for x in results] == ["a", "b", "c"]
    assert all(taxonomy.is_valid_path(x["full_path"]) for x in results)
    assert all(x["category_path"] == [] or taxonomy.is_valid_path(x["category_path"]) for x in results)


@pytest.mark.parametrize("body, status, needle", [
    ({"description": "no title"}, 422, "title"),
    ({"title": "   "}, 422, "blank"),
    ({"title": "ok", "colour": "red"}, 422, "colour"),
    ({"products": []}, 422, "products"),
    ({"products": [{"title": "x"}] * 257}, 422, "products"),
    ({"title": "x", "image_base64": "not base64!!"}, 422, "base64"),
    ({"title": "x", "image_base64": base64.b64encode(b"definitely not an image").decode()}, 422, "image"),
    ({"title": "x" * 501}, 422, "title"),
])
def test_bad_requests_get_clear_4xx(server, body, status, needle):
    r = server.post("/classify", json=body)
    assert r.status_code == status, r.text
    assert needle in r.text


@pytest.mark.parametrize("raw, needle", [
    (b'{"title": NaN}', "title"),  # was 500: the 422 echoed NaN back and the JSON encoder refused it
    (b'{"title": Infinity}', "title"),
    (b'{"title": "Nike \\ud800 shirt"}', "lone surrogates"),  # was 500: a lone surrogate reached the encoder
    (b'{"products": [{"title": "ok"}, {"title": "\\udfff"}]}', "lone surrogates"),
    (b'{"title": "caf\xe9"}', "UTF-8"),
    (b'[]', "object"), (b'"x"', "object"), (b'null', "object"), (b'', "empty body"),
    (b'{"title": "x"} {"title": "y"}', "JSON"),
])
def test_malformed_bodies_get_a_short_422(server, raw, needle):
    r = server.post("/classify", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"] + json.dumps(r.json().get("errors", []))
    assert len(r.content) < 1000


def test_a_422_does_not_echo_the_input(server):
    """Was: a 4 MB bad image came back whole in the 422 (a 4 MB answer)."""
    bad_image = base64.b64encode(os.urandom(3_000_000)).decode()
    r = server.post("/classify", json={"title": "x", "image_base64": bad_image})
    assert r.status_code == 422 and "image_base64" in r.text and len(r.content) < 1000
    r = server.post("/classify", json={"products": [{"title": "x" * 4000, "colour": "y" * 100_000}] * 50})
    assert r.status_code == 422 and len(r.content) < 4000 and "xxxxxxxxxx" not in r.text
    r = server.post("/classify", json={"title": "ok", "image_base64": base64.b64encode(b"GIF89a" + b"x" * 1_500_000)
                                       .decode()})
    assert r.status_code == 422 and len(r.content) < 1000


def test_serve_beyond_loopback_needs_a_token(two_stage_models):
    """Was: `serve --host 0.0.0.0` served an open classifier to the network. Now it refuses before loading."""
    env = {**os.environ, "PRODCAT_WORK": str(two_stage_models["work"]), "PRODCAT_DATA": str(two_stage_models["raw"]),
           "PRODCAT_QUIET": "1"}
    env.pop("PRODCAT_TOKEN", None)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "serve", "--host", "0.0.0.0", "--port",
                           str(free_port()), "--model", str(two_stage_models["stage2_dir"])], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "without authentication" in proc.stderr and "PRODCAT_TOKEN" in proc.stderr
    assert time.time() - t0 < 60


def test_not_json_and_too_large(server):
    r = server.post("/classify", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = server.post("/classify", content=b"x" * 9_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.text

    def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(10):
            yield b" " * 1_000_000

    r = server.post("/classify", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert server.get("/health").status_code == 200  # still serving


def test_serve_refuses_a_model_of_another_taxonomy_version(two_stage_models, tmp_path):
    """The models load (and their manifests are checked) before uvicorn starts: a clear error and exit code 2."""
    import yaml

    from pipelines.settings import TAXONOMY_PATH

    doc = yaml.safe_load(TAXONOMY_PATH.read_text())
    doc["version"] = int(doc.get("version", 1)) + 1
    (tmp_path / "taxonomy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, "PRODCAT_WORK": str(two_stage_models["work"]), "PRODCAT_DATA": str(two_stage_models["raw"]),
           "PRODCAT_TAXONOMY": str(tmp_path / "taxonomy.yaml"), "PRODCAT_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "serve", "--port", str(free_port()), "--model",
                           str(two_stage_models["stage2_dir"])], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "taxonomy version: model trained with 1, current configuration gives 2" in proc.stderr
