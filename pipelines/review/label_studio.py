"""Label Studio interoperability, for teams that already label there: a queue out as tasks, annotations back in.

    tasks = label_studio_tasks(source.queues["needs_review"], model_version)   # JSON list, importable as is
    decisions = read_label_studio_annotations("export.json", taxonomy)          # -> rows for DecisionStore.record

Tasks carry `data` (title, description, image, and the queue/shop/item_id that bring an answer home) and one
prediction: the predicted path as a choice of a `Taxonomy` control named "category" (`label_studio_config` writes
the matching labelling config) with its confidence as score. An annotation answers with a taxonomy path (accept
when it equals the prediction, correct otherwise), the choice "out_of_scope" of the "scope" control, or a
cancelled (skipped) annotation. A file that is not such an export is refused whole, listing every bad item.
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

TAXONOMY_CONTROL, SCOPE_CONTROL = "category", "scope"


class LabelStudioImportError(ValueError):
    """An annotation export that cannot become decisions; the message lists every bad item."""


def label_studio_tasks(queue, model_version: str = "", image_url: str = "/review/{queue}/image/{name}") -> list:
    """The queue's items as Label Studio tasks with the model's prediction (path as taxonomy choice + score)."""
    from pipelines.taxonomy.tree import parse_path

    tasks = []
    for n, item in enumerate(queue.items, start=1):
        image = image_url.format(queue=queue.name, name=item.image_name) if item.image is not None else ""
        task = {"id": n, "data": {"title": item.title, "description": item.description, "image": image,
                                  "queue": queue.name, "shop": item.shop, "item_id": item.item_id,
                                  "predicted_path": item.predicted_path}}
        levels = list(parse_path(item.predicted_path))
        if levels:
            scores = [c for _, c in item.confidences if c is not None]
            task["predictions"] = [{"model_version": model_version, "score": min(scores) if scores else None,
                                    "result": [{"from_name": TAXONOMY_CONTROL, "to_name": "title",
                                                "type": "taxonomy", "value": {"taxonomy": [levels]}}]}]
        tasks.append(task)
    return tasks


def label_studio_config(taxonomy) -> str:
    """The labelling config (XML) the tasks expect: title, description, image, the taxonomy and a scope choice."""
    def choices(node) -> str:
        return "".join(f'<Choice value="{escape(c[-1])}">{choices(c)}</Choice>' for c in taxonomy.children(node))

    return ('<View><Header value="$title"/><Text name="title" value="$title"/><Text name="description" '
            'value="$description"/><Image name="image" value="$image"/>'
            f'<Taxonomy name="{TAXONOMY_CONTROL}" toName="title">{choices(())}</Taxonomy>'
            f'<Choices name="{SCOPE_CONTROL}" toName="title"><Choice value="out_of_scope"/></Choices></View>')


def _reviewer(annotation: dict, default: str) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("username") or who.get("id") or default)
    return default if who in (None, "") else f"label-studio:{who}"


def _answer(annotation: dict) -> tuple[str, list | None]:
    """(decision, path levels) of one annotation; ValueError saying why it has none."""
    if annotation.get("was_cancelled"):
        return "skip", None
    paths, scope = [], []
    for result in annotation.get("result") or []:
        value = result.get("value") or {}
        if result.get("type") == "taxonomy":
            paths += value.get("taxonomy") or []
        elif result.get("type") == "choices":
            scope += value.get("choices") or []
    if "out_of_scope" in scope:
        return "out_of_scope", None
    if len(paths) != 1:
        raise ValueError(f"{len(paths)} taxonomy paths chosen (one expected)" if paths else "no answer")
    return "path", [str(level) for level in paths[0]]


def task_decision(task, taxonomy, default_reviewer: str) -> dict:
    """One task's latest annotation as a decision row (queue, shop, item_id, decision, path, predicted_path,
    reviewer); ValueError saying what is wrong with the task."""
    from pipelines.review.store import validate_decision
    from pipelines.taxonomy.tree import parse_path, path_str

    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ValueError("not a task object with `data`")
    data = task["data"]
    missing = [k for k in ("queue", "shop", "item_id") if not str(data.get(k) or "").strip()]
    if missing:
        raise ValueError(f"data lacks {missing} (export tasks made by `prodcat review export`)")
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    if not annotations:
        raise ValueError("no annotation")
    latest = max(annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id", 0)))
    decision, levels = _answer(latest)
    predicted = path_str(parse_path(data.get("predicted_path") or ""))
    if decision == "path":
        if not taxonomy.is_valid_path(tuple(levels)):
            raise ValueError(f"{path_str(levels)!r} is not a path of the taxonomy")
        decision = "accept" if path_str(levels) == predicted else "correct"
    row = {"queue": str(data["queue"]), "shop": str(data["shop"]), "item_id": str(data["item_id"]),
           "decision": decision, "path": path_str(levels or []), "predicted_path": predicted,
           "reviewer": _reviewer(latest, default_reviewer)}
    validate_decision(row["queue"], decision, row["path"], row["reviewer"], taxonomy)  # what the store would refuse
    return row


def read_label_studio_annotations(path, taxonomy, default_reviewer: str = "label-studio") -> list[dict]:
    """Every task of a Label Studio JSON export as a decision row; LabelStudioImportError listing every bad task
    (nothing is imported from a file with one)."""
    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabelStudioImportError(f"{path}: not a Label Studio JSON export ({e})") from None
    if not isinstance(tasks, list):
        raise LabelStudioImportError(f"{path}: a Label Studio JSON export is a list of tasks")
    rows, errors = [], []
    for n, task in enumerate(tasks):
        try:
            rows.append(task_decision(task, taxonomy, default_reviewer))
        except ValueError as e:
            ident = task.get("id", "?") if isinstance(task, dict) else "?"
            errors.append(f"task #{n} (id {ident}): {e}")
    if errors:
        raise LabelStudioImportError(f"{path}: {len(errors)} of {len(tasks)} tasks cannot be imported:\n  "
                                     + "\n  ".join(errors))
    return rows


def import_label_studio(path, store, model_version: str = "", default_reviewer: str = "label-studio") -> int:
    """Read the export whole (every task valid) and append its decisions to `store`; -> decisions recorded."""
    rows = read_label_studio_annotations(path, store.taxonomy, default_reviewer)
    for r in rows:
        store.record(r["queue"], r["shop"], r["item_id"], r["decision"], r["path"],
                     predicted_path=r["predicted_path"], model_version=model_version, reviewer=r["reviewer"])
    return len(rows)


def export_label_studio_tasks(source_dir, queue: str, out, taxonomy) -> dict:
    """`prodcat review export`: the queue of an output folder as Label Studio tasks (`out`, JSON) and the matching
    labelling config beside it (`<out>.config.xml`), both written atomically."""
    from pipelines.files import atomic_write_text
    from pipelines.review.queues import load_review_source

    source = load_review_source(source_dir)
    if queue not in source.queues:
        raise ValueError(f"unknown queue {queue!r}: one of {', '.join(source.queues)}")
    tasks = label_studio_tasks(source.queues[queue], source.model_version)
    out = Path(out)
    atomic_write_text(out, json.dumps(tasks, ensure_ascii=False, indent=1))
    config = atomic_write_text(out.with_name(out.stem + ".config.xml"), label_studio_config(taxonomy))
    return {"queue": queue, "shop": source.shop, "tasks": len(tasks), "out": str(out), "config": str(config)}
