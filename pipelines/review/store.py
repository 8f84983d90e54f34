"""The reviewers' decisions: an append-only table in a real database (SQLite by default, any SQLAlchemy URL).

    store = DecisionStore(default_review_db(settings.work_dir), taxonomy)
    store.record("needs_review", "hm", "0803373003", "correct", "Footwear > Shoes > Sneakers",
                 predicted_path="Footwear > Shoes", model_version="stage2@3", reviewer="ana")
    store.latest()  # the latest decision per (queue, shop, item_id)

Append-only, so nothing a reviewer did is lost and two reviewers who disagree stay visible: the class offers no
update or delete, and on SQLite triggers refuse UPDATE and DELETE on the table from any client. "The current
answer" is a query (the row with the highest id per key), never an overwrite. Every decision is validated before it
is written - a known decision, a reviewer name, a path of the taxonomy where the decision needs one - and a bad one
is a named exception with a message saying what was wrong.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

DECISIONS = ("accept", "correct", "out_of_scope", "skip")
QUEUES = ("needs_review", "label_first", "mappings")
PATH_DECISIONS = ("accept", "correct")  # these name the taxonomy path the item belongs to
COLUMNS = ["id", "queue", "shop", "item_id", "decision", "path", "predicted_path", "model_version", "reviewer",
           "decided_at"]
TABLE = "review_decisions"


class ReviewError(ValueError):
    """A decision that cannot be recorded; the message says which field and why."""


class UnknownDecision(ReviewError):
    pass


class UnknownQueue(ReviewError):
    pass


class PathNotInTaxonomy(ReviewError):
    pass


class MissingReviewer(ReviewError):
    pass


def default_review_db(work_dir) -> str:
    """sqlite:///<work>/review/decisions.db (the folder is created)."""
    path = review_db_path(work_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def read_decisions(url: str, taxonomy) -> pd.DataFrame:
    """Every decision behind `url`; an SQLite file that does not exist yet is no decision (and is not created:
    reading the table must not write to the work dir)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(str(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        return pd.DataFrame(columns=COLUMNS)
    store = DecisionStore(url, taxonomy)
    try:
        return store.decisions()
    finally:
        store.close()


def review_db_path(work_dir) -> Path:
    return Path(work_dir) / "review" / "decisions.db"


def validate_decision(queue: str, decision: str, path: str, reviewer: str, taxonomy) -> tuple[str, str]:
    """(reviewer, path) cleaned, or the named ReviewError. accept/correct need a taxonomy path; out_of_scope and
    skip carry none (a path given with them is refused rather than silently dropped)."""
    from pipelines.taxonomy.tree import parse_path, path_str

    if queue not in QUEUES:
        raise UnknownQueue(f"unknown queue {queue!r}: one of {', '.join(QUEUES)}")
    if decision not in DECISIONS:
        raise UnknownDecision(f"unknown decision {decision!r}: one of {', '.join(DECISIONS)}")
    reviewer = (reviewer or "").strip()
    if not reviewer:
        raise MissingReviewer("a decision needs the reviewer's name (who decided is part of the record)")
    levels = parse_path(path or "")
    if decision in PATH_DECISIONS:
        if not levels:
            raise PathNotInTaxonomy(f"decision {decision!r} needs a taxonomy path")
        if not taxonomy.is_valid_path(levels):
            raise PathNotInTaxonomy(f"{path_str(levels)!r} is not a path of taxonomy {taxonomy.name} "
                                    f"v{taxonomy.version}")
    elif levels:
        raise PathNotInTaxonomy(f"decision {decision!r} takes no path (got {path_str(levels)!r})")
    return reviewer, path_str(levels)


def _table(metadata):
    from sqlalchemy import Column, DateTime, Integer, String, Table, Text

    return Table(TABLE, metadata,
                 Column("id", Integer, primary_key=True, autoincrement=True),
                 Column("queue", String(32), nullable=False, index=True),
                 Column("shop", String(128), nullable=False),
                 Column("item_id", Text, nullable=False),
                 Column("decision", String(16), nullable=False),
                 Column("path", Text, nullable=False, default=""),
                 Column("predicted_path", Text, nullable=False, default=""),
                 Column("model_version", Text, nullable=False, default=""),
                 Column("reviewer", String(128), nullable=False),
                 Column("decided_at", DateTime(timezone=True), nullable=False))


APPEND_ONLY_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_no_update BEFORE UPDATE ON {TABLE} "
    f"BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only'); END",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_no_delete BEFORE DELETE ON {TABLE} "
    f"BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only'); END",
]


class DecisionStore:
    """The decision table behind one SQLAlchemy URL; created on first use."""

    def __init__(self, url: str, taxonomy):
        from sqlalchemy import MetaData, create_engine, text

        self.url, self.taxonomy = str(url), taxonomy
        self.engine = create_engine(self.url, future=True)
        self.table = _table(MetaData())
        self.table.metadata.create_all(self.engine)
        if self.engine.dialect.name == "sqlite":
            with self.engine.begin() as conn:
                for statement in APPEND_ONLY_TRIGGERS:
                    conn.execute(text(statement))

    def record(self, queue: str, shop: str, item_id: str, decision: str, path: str = "", *,
               predicted_path: str = "", model_version: str = "", reviewer: str = "") -> int:
        """Append one validated decision; -> its id."""
        reviewer, path = validate_decision(queue, decision, path, reviewer, self.taxonomy)
        if not str(item_id or "").strip() or not str(shop or "").strip():
            raise ReviewError("a decision needs the shop and the item it is about")
        row = {"queue": queue, "shop": str(shop), "item_id": str(item_id), "decision": decision, "path": path,
               "predicted_path": predicted_path or "", "model_version": model_version or "", "reviewer": reviewer,
               "decided_at": datetime.now(timezone.utc)}
        with self.engine.begin() as conn:
            return int(conn.execute(self.table.insert().values(**row)).inserted_primary_key[0])

    def decisions(self, queue: str | None = None) -> pd.DataFrame:
        """Every decision (of `queue`), oldest first."""
        from sqlalchemy import select

        query = select(self.table).order_by(self.table.c.id)
        if queue is not None:
            query = query.where(self.table.c.queue == queue)
        return self._frame(query)

    def latest(self, queue: str | None = None, include_skips: bool = True) -> pd.DataFrame:
        """The latest decision per (queue, shop, item_id); without skips, the latest that is not a skip."""
        from sqlalchemy import func, select

        t = self.table
        inner = select(func.max(t.c.id))
        if not include_skips:
            inner = inner.where(t.c.decision != "skip")
        if queue is not None:
            inner = inner.where(t.c.queue == queue)
        inner = inner.group_by(t.c.queue, t.c.shop, t.c.item_id)
        return self._frame(select(t).where(t.c.id.in_(inner)).order_by(t.c.id))

    def _frame(self, query) -> pd.DataFrame:
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        return pd.DataFrame(rows, columns=COLUMNS)

    def close(self) -> None:
        self.engine.dispose()
