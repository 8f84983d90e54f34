"""Dynamic micro-batching across concurrent requests (as Triton, Ray Serve and BentoML do), in two stages.

The service used to run each request's products through the models under one lock: 16 clients queued behind each
other and one batch of 256 long products held everyone for seconds, while stage 1 alone classifies thousands of
products per second in batch. Here a request only enqueues its products and awaits a future:

- the stage-1 worker thread takes up to `batch_size` products from any requests (waiting at most `batch_wait_ms`
  for more once it has one), computes their lexical features, runs stage 1 on the batch and answers the confident
  products at once; the uncertain ones go to the stage-2 queue with their lexical features;
- the stage-2 worker thread batches those the same way (up to `stage2_batch_size`), computes their text/image/joint
  vectors (vector_cache.py) and runs stage 2.

A big request is split across batches, so a product sent alone is never stuck behind one long request's stage 2,
and stage-1 answers never wait for stage-2 work. Admission is bounded (`max_items_in_flight`, 503 beyond); a
request that timed out or went away has its remaining products skipped. The steps are those of
TwoStage.classify (lexical features, routing threshold, abstention), applied per batch.

Batch invariance: a matrix product's last bits depend on its row count (MKL picks other kernels for 1, 5 or 13
rows), and answers are rounded to 4 decimals, so a product's confidence could read 0.8794 alone and 0.8795 beside
others. Every model call of a stage here therefore sees exactly that stage's batch size in rows (zero rows with no
modality available fill the rest; each row's result is then independent of its neighbours and its position), and
a product gets the same path and confidences whether it is classified alone, in a request's batch or among other
requests' products. The lexical features are row-wise already; text and image vectors come from the store or the
LRU (vector_cache.py).
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from pipelines.inference.guards import Admission, RequestRefused, ServiceLimits

log = logging.getLogger("prodcat.service")
STOP = object()


class Job:
    """One request: its products' results, filled in by the workers, and the future the request awaits."""

    def __init__(self, loop, n: int):
        self.loop, self.future = loop, loop.create_future()
        self.results, self.remaining, self.cancelled = [None] * n, n, False
        self.lock = threading.Lock()

    def _set(self, value):
        if not self.future.done():
            self.future.set_result(value) if not isinstance(value, BaseException) else self.future.set_exception(value)

    def fill(self, index: int, result: dict) -> None:
        with self.lock:
            self.results[index] = result
            self.remaining -= 1
            finished = self.remaining == 0
        if finished:
            self.loop.call_soon_threadsafe(self._set, self.results)

    def fail(self, error: BaseException) -> None:
        self.cancelled = True
        self.loop.call_soon_threadsafe(self._set, error)


@dataclass(eq=False)
class Item:
    job: Job
    index: int
    product_id: str
    text: str
    image: object = None  # PreparedImage or None
    lex: np.ndarray | None = None
    ok: bool = True
    path: tuple = ()
    conf: np.ndarray | None = None
    handled: bool = False  # answered, or passed on to stage 2, by the batch it is in now


def take_batch(q: queue.Queue, max_items: int, wait_s: float) -> list:
    """Up to max_items from q: blocks for the first (0.5 s, so a stop is noticed), then waits at most wait_s for
    more. A STOP sentinel is returned alone."""
    try:
        first = q.get(timeout=0.5)
    except queue.Empty:
        return []
    items, deadline = [first], time.monotonic() + wait_s
    while len(items) < max_items and first is not STOP:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                nxt = q.get(timeout=left)
            except queue.Empty:
                break
        if nxt is STOP:
            q.put(STOP)  # seen by this worker's next take
            break
        items.append(nxt)
    return items


@dataclass
class BatchStats:
    batches: dict = field(default_factory=lambda: {"stage1": 0, "stage2": 0})
    items: dict = field(default_factory=lambda: {"stage1": 0, "stage2": 0})
    busy_s: dict = field(default_factory=lambda: {"stage1": 0.0, "stage2": 0.0})  # wall time spent in batches
    skipped: int = 0
    failed_batches: int = 0


def lay_out_for_small_batches(space: dict) -> None:
    """Store each TruncatedSVD's components in Fortran order, in place. sklearn's transform computes
    X @ components_.T; with C-order components that transpose is not contiguous and scipy copies the whole
    (256 x n_features) matrix on every call - 15 ms for one product, the bulk of stage 1's cost per micro-batch.
    Same values, same kernel, so the same bits; only the copy goes."""
    from sklearn.decomposition import TruncatedSVD

    for model in space.values():
        for _, step in getattr(model, "steps", []):
            if isinstance(step, TruncatedSVD):
                step.components_ = np.asfortranarray(step.components_)


class MicroBatcher:
    """Two worker threads over a loaded TwoStage (`clf`) and the service's stage-2 features (`features`)."""

    def __init__(self, clf, features, limits: ServiceLimits):
        self.clf, self.features, self.limits = clf, features, limits
        lay_out_for_small_batches(clf.lexical)
        self.q1, self.q2 = queue.Queue(), queue.Queue()
        self.admitted, self.stats = Admission(limits.max_items_in_flight, "products queued"), BatchStats()
        self.threads = [threading.Thread(target=self._loop, args=(name,), name=f"prodcat-{name}", daemon=True)
                        for name in ("stage1", "stage2")]
        for t in self.threads:
            t.start()

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self.threads)

    def submit(self, loop, products, images: list) -> Job:
        """Enqueue one request's products; 503 when the service already holds max_items_in_flight products."""
        from pipelines.inference.features import embedding_texts

        n = len(products)
        self.admitted.take(n)
        job = Job(loop, n)
        texts = embedding_texts([p.title for p in products], [p.description for p in products])
        for i, (p, text, image) in enumerate(zip(products, texts, images)):
            self.q1.put(Item(job, i, p.product_id or str(i), text, image))
        return job

    @property
    def in_flight(self) -> int:
        return self.admitted.used

    def _done(self, n: int) -> None:
        self.admitted.give(n)

    def _loop(self, stage: str) -> None:
        q, run, size = ((self.q1, self._stage1, self.limits.batch_size) if stage == "stage1"
                        else (self.q2, self._stage2, self.limits.stage2_batch_size))
        wait_s = self.limits.batch_wait_ms / 1000
        while True:
            items = take_batch(q, size, wait_s)
            if items and items[0] is STOP:
                return
            live = [it for it in items if not it.job.cancelled]
            if len(live) < len(items):
                self.stats.skipped += len(items) - len(live)
                self._done(len(items) - len(live))
            if not live:
                continue
            for it in live:
                it.handled = False
            t0 = time.perf_counter()
            try:
                run(live)
            except Exception as e:  # a bug, not bad input (requests are validated): fail these requests, go on
                log.exception("classification batch failed")
                self.stats.failed_batches += 1
                for job in {it.job for it in live}:
                    job.fail(RequestRefused(500, f"internal error while classifying ({type(e).__name__})"))
                self._done(sum(1 for it in live if not it.handled))  # handed-on ones are skipped (job cancelled)
            else:
                self.stats.batches[stage] += 1
                self.stats.items[stage] += len(live)
            self.stats.busy_s[stage] += time.perf_counter() - t0

    def _stage1(self, items: list) -> None:
        """Lexical features and stage 1 for the batch; the confident answered, the uncertain queued for stage 2."""
        from sklearn import config_context

        from pipelines.inference.features import lexical_features

        clf = self.clf
        with config_context(assume_finite=True, skip_parameter_validation=True):  # checks only: same numbers, less time
            lex, ok = lexical_features(clf.lexical, [it.text for it in items])
        if clf.stage1 is not None:
            p1 = predict_rows(clf.stage1, {"lexical": lex}, {"lexical": ok}, self.limits.batch_size)
            routed = np.zeros(len(items), bool) if clf.mode == "stage1" else p1.prob < clf.threshold
        else:
            routed = np.ones(len(items), bool)
        answered = []
        for j, it in enumerate(items):
            it.lex, it.ok = lex[j], bool(ok[j])
            if clf.stage1 is not None:
                it.path, it.conf = tuple(p1.paths[j]), p1.conf[j].copy()
            if routed[j]:
                it.handled = True
                self.q2.put(it)
            else:
                answered.append(it)
        self._answer(answered, 1)

    def _stage2(self, items: list) -> None:
        features, available = self.features([it.text for it in items], [it.image for it in items])
        features["lexical"] = np.stack([it.lex for it in items])
        available["lexical"] = np.array([it.ok for it in items], bool)
        p2 = predict_rows(self.clf.stage2, features, available, self.limits.stage2_batch_size)
        for j, it in enumerate(items):
            it.path, it.conf = tuple(p2.paths[j]), p2.conf[j]
        self._answer(items, 2)

    def _answer(self, items: list, stage: int) -> None:
        from pipelines.inference.calibration import abstain

        if not items:
            return
        depth = self.clf.depth
        conf = np.stack([it.conf if it.conf is not None else np.full(depth, np.nan, np.float32) for it in items])
        cut, review = abstain([it.path for it in items], conf, self.clf.abstain_at or [0.0] * depth)
        for j, it in enumerate(items):
            it.job.fill(it.index, result_record(it, list(cut[j]), conf[j], stage, bool(review[j])))
            it.image, it.handled = None, True  # the tensor is not needed any more
        self._done(len(items))

    def close(self) -> None:
        self.q1.put(STOP), self.q2.put(STOP)
        for t in self.threads:
            t.join(timeout=10)


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """x with zero rows (False for a mask) appended up to `rows`."""
    pad = np.zeros((rows - len(x),) + x.shape[1:], x.dtype)
    return np.concatenate([x, pad]) if len(pad) else x


def predict_rows(stage, features: dict, available: dict, rows: int):
    """stage.predict on exactly `rows` rows (the padding has no modality available), cut back to the real ones."""
    from pipelines.inference.calibration import Prediction

    n = len(next(iter(available.values())))
    if n > rows:
        raise ValueError(f"{n} rows in one model call; the batcher takes at most {rows}")
    p = stage.predict({m: pad_rows(x, rows) for m, x in features.items()},
                      {m: pad_rows(np.asarray(x, bool), rows) for m, x in available.items()})
    return Prediction(list(p.paths[:n]), p.conf[:n], p.prob[:n])


def result_record(item: Item, cut: list, conf: np.ndarray, stage: int, review: bool) -> dict:
    """The Result of one product (api_models.Result) as a plain dict, ready for JSON."""
    return {"product_id": item.product_id, "category_path": cut, "category": " > ".join(cut),
            "confidence": {f"L{lvl + 1}": None if math.isnan(float(c)) else round(float(c), 4)
                           for lvl, c in enumerate(conf)},
            "full_path": list(item.path), "stage": stage, "needs_review": review,
            "image_used": item.image is not None and stage == 2}
