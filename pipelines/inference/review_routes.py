"""The review page's routes on the service app (`prodcat serve --review DIR`): GET /review (queues and progress),
GET /review/{queue}?i=N (one item), POST /review/{queue}/decision, GET /review/{queue}/image/{name},
GET /review/taxonomy?q= (the searchable node list), GET|POST /review/login.

Authentication is the service's: with a token (required beyond loopback) every /review request needs it. A browser
cannot add an `Authorization` header to a page load, so /review/login takes the token once (checked by the same
constant-time `bearer_ok`) and keeps it in an HttpOnly, SameSite=Strict cookie that `ReviewTokenCookie` turns back
into the header before the service's `BearerAuth` checks it. A decision needs the reviewer's name; an invalid one
(unknown decision, a path outside the taxonomy, no name) is a 422 with the store's message.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, unquote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from pipelines.inference.guards import RequestRefused, bearer_ok, read_body

TOKEN_COOKIE, REVIEWER_COOKIE = "prodcat_token", "prodcat_reviewer"
MAX_LOGIN_BYTES = 4096


@dataclass
class ReviewApp:
    """What the review routes serve: the queues of one folder and the decision store."""

    source: object  # pipelines.review.queues.ReviewSource
    store: object  # pipelines.review.store.DecisionStore

    @classmethod
    def open(cls, folder, db_url: str, taxonomy, export: tuple | None = None) -> "ReviewApp":
        """`export` = (platform, raw export dir) when `folder` is a `prodcat classify` output (no texts of its own)."""
        from pipelines.review.queues import load_review_source
        from pipelines.review.store import DecisionStore

        return cls(load_review_source(folder, export=export), DecisionStore(db_url, taxonomy))


def _cookies(scope) -> dict:
    raw = b"; ".join(v for k, v in scope.get("headers") or [] if k == b"cookie").decode("latin-1")
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed cookie header is no cookie, not a 500
        return {}
    return {k: unquote(m.value) for k, m in jar.items()}


class ReviewTokenCookie:
    """ASGI middleware in front of BearerAuth: serves /review/login, and for other /review requests without an
    Authorization header turns the login cookie into one (BearerAuth then checks it as any other)."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/review"):
            return await self.app(scope, receive, send)
        if scope["path"] == "/review/login":
            return await self._login(scope, receive, send)
        headers = list(scope.get("headers") or [])
        cookie = _cookies(scope).get(TOKEN_COOKIE)
        if cookie and not any(k == b"authorization" for k, _ in headers) and cookie.isascii():
            scope = dict(scope, headers=headers + [(b"authorization", f"Bearer {cookie}".encode("ascii"))])
        return await self.app(scope, receive, send)

    async def _login(self, scope, receive, send):
        from pipelines.review.page import login_html

        if self.token is None:
            response = RedirectResponse("/review", status_code=303)
        elif scope["method"] != "POST":
            response = HTMLResponse(login_html())
        else:
            body, more = b"", True
            while more and len(body) <= MAX_LOGIN_BYTES:
                message = await receive()
                body, more = body + message.get("body", b""), message.get("more_body", False)
            given = (parse_qs(body[:MAX_LOGIN_BYTES].decode("utf-8", "replace")).get("token") or [""])[0]
            if given.isascii() and bearer_ok([(b"authorization", f"Bearer {given}".encode("ascii"))], self.token):
                response = RedirectResponse("/review", status_code=303)
                response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict", path="/review")
            else:
                response = HTMLResponse(login_html("That is not the service token."), status_code=401)
        await response(scope, receive, send)


def _json_response(doc, status: int = 200) -> Response:
    return Response(json.dumps(doc, ensure_ascii=False).encode("utf-8"), status_code=status,
                    media_type="application/json")


def _review(request: Request):
    return request.app.state.review


def _queue(request: Request, name: str):
    queue = _review(request).source.queues.get(name)
    if queue is None:
        raise RequestRefused(404, f"no review queue {name[:40]!r}: one of {', '.join(_review(request).source.queues)}")
    return queue


def next_index(queue, latest, after: int = -1) -> int:
    """The next item after `after` that has no decision (wrapping); else the first skipped one; else `after`+1."""
    decided = latest[latest["queue"] == queue.name]
    state = dict(zip(decided["item_id"], decided["decision"]))
    n = len(queue.items)
    order = [(after + 1 + k) % n for k in range(n)] if n else []
    for wanted in (None, "skip"):
        for i in order:
            if state.get(queue.items[i].item_id) == wanted:
                return i
    return (after + 1) % n if n else 0


async def _queues_route(request: Request) -> Response:
    from pipelines.review.page import queue_list_html
    from pipelines.review.queues import queue_progress

    review = _review(request)
    latest = await run_in_threadpool(review.store.latest, None, False)
    progress = {name: queue_progress(q, latest) for name, q in review.source.queues.items()}
    return HTMLResponse(queue_list_html(review.source, progress))


async def _item_route(request: Request) -> Response:
    from pipelines.review.page import item_html
    from pipelines.review.queues import queue_progress

    review, queue = _review(request), _queue(request, request.path_params["queue"])
    store = review.store
    latest = await run_in_threadpool(store.latest, queue.name, True)
    index = request.query_params.get("i", "")
    index = int(index) % len(queue.items) if index.isdigit() and queue.items else next_index(queue, latest)
    history = await run_in_threadpool(store.decisions, queue.name)
    if queue.items:
        history = history[history["item_id"] == queue.items[index].item_id]
    progress = queue_progress(queue, latest[latest["decision"] != "skip"])
    nodes = [" > ".join(n) for n in _review(request).store.taxonomy.nodes]
    reviewer = _cookies(request.scope).get(REVIEWER_COOKIE, "")
    return HTMLResponse(item_html(review.source, queue, index, progress, history, reviewer, nodes))


async def _decision_route(request: Request) -> Response:
    from pipelines.review.store import ReviewError

    review, queue = _review(request), _queue(request, request.path_params["queue"])
    state = request.app.state
    body = await read_body(request, state.limits, state.bodies)
    state.bodies.give(len(body))
    try:
        doc = json.loads(body)
        item = next(i for i in queue.items if i.item_id == str(doc["item_id"]))
    except (ValueError, TypeError, KeyError, StopIteration):
        raise RequestRefused(422, "a decision is JSON {item_id, decision, path, reviewer} about an item of the "
                                  "queue") from None
    decision = str(doc.get("decision", ""))
    path = item.predicted_path if decision == "accept" else str(doc.get("path") or "")
    try:
        new_id = await run_in_threadpool(lambda: review.store.record(
            queue.name, item.shop, item.item_id, decision, path, predicted_path=item.predicted_path,
            model_version=review.source.model_version, reviewer=str(doc.get("reviewer") or "")))
    except ReviewError as e:
        raise RequestRefused(422, str(e)) from None
    latest = await run_in_threadpool(review.store.latest, queue.name, True)
    after = queue.items.index(item)
    return _json_response({"id": new_id, "next": next_index(queue, latest, after)})


async def _image_route(request: Request) -> Response:
    path = _queue(request, request.path_params["queue"]).image_file(request.path_params["name"])
    if path is None:
        raise RequestRefused(404, "no such image in this queue")
    return FileResponse(path)


async def _taxonomy_nodes_route(request: Request) -> Response:
    q = request.query_params.get("q", "").strip().casefold()[:100]
    nodes = [" > ".join(n) for n in _review(request).store.taxonomy.nodes]
    return _json_response({"nodes": [n for n in nodes if q in n.casefold()]})


def add_review_routes(app: FastAPI, review: ReviewApp, token: str | None) -> None:
    """Mount the review page on the service app (called by create_app when a review source is given)."""
    app.state.review = review
    app.add_middleware(ReviewTokenCookie, token=token)
    app.add_api_route("/review", _queues_route, methods=["GET"], response_class=Response)
    app.add_api_route("/review/taxonomy", _taxonomy_nodes_route, methods=["GET"], response_class=Response)
    app.add_api_route("/review/{queue}", _item_route, methods=["GET"], response_class=Response)
    app.add_api_route("/review/{queue}/decision", _decision_route, methods=["POST"], response_class=Response)
    app.add_api_route("/review/{queue}/image/{name}", _image_route, methods=["GET"], response_class=Response)
