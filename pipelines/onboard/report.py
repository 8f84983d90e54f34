"""The onboarding report: Markdown and one self-contained HTML file (thumbnails inlined as data URIs, no external
resource), for the catalogue team reviewing a new shop.

Sections: counts; quarantine by reason; the proposed mapping (largest categories first) with example titles and, in
HTML, thumbnails of the example products; the products flagged out of scope; the products flagged for review.
Every shop-supplied string is escaped (HTML) or neutralised (Markdown table cells): a feed is untrusted input.
Long lists are cut at `LIST_ROWS` rows, saying how many were left out.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

from pipelines.taxonomy.tree import path_str

LIST_ROWS = 200
THUMBNAIL_PX = 72
MAX_THUMBNAILS = 400  # bounds the HTML file's size (a few KB each)


def md_cell(value) -> str:
    return str(value if value is not None else "").replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_\n"
    lines = ["| " + " | ".join(map(md_cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def proposal_view(proposal: pd.DataFrame) -> pd.DataFrame:
    """The proposal rows to show, largest first, with one 'proposal' column (a path or the unmapped reason)."""
    view = proposal.sort_values(["support", "native_path"], ascending=[False, True]).head(LIST_ROWS)
    return pd.DataFrame({"native category": view["native_path"],
                         "proposal": [path_str(p) if p else f"unmapped: {r}" for p, r in
                                      zip(view["category_path"], view["unmapped_reason"])],
                         "support": view["support"], "agreement": view["agreement"],
                         "confidence": view["confidence"], "confident": view["confident"].map({True: "yes",
                                                                                                False: ""}),
                         "examples": view["example_titles"], "_images": view["example_images"]})


def flagged_view(predictions: pd.DataFrame, products: pd.DataFrame, column: str) -> pd.DataFrame:
    rows = predictions.index[predictions[column].to_numpy(bool)]
    view = predictions.loc[rows, ["product_id", "title", "native_path", "model_path", "scope_score"]].head(LIST_ROWS)
    return view.assign(_images=products.loc[view.index, "image_path"].fillna("").to_numpy())


def counts_table(summary: dict) -> pd.DataFrame:
    keys = ["rows_in", "products", "quarantined", "out_of_scope", "needs_review", "with_image"]
    return pd.DataFrame({"count": keys, "value": [summary.get(k, "") for k in keys]})


def quarantine_table(quarantine: pd.DataFrame) -> pd.DataFrame:
    counts = quarantine["reason_kind"].value_counts()
    return pd.DataFrame({"reason": counts.index, "rows": counts.to_numpy()})


def onboarding_markdown(summary: dict, products, predictions, proposal, quarantine) -> str:
    shop = summary["shop"]
    parts = [f"# Onboarding {shop}\n", f"Feed `{summary['feed']}` ({summary['format']}).\n", md_table(
        counts_table(summary)), "\n## Quarantine by reason\n", md_table(quarantine_table(quarantine)),
        f"\n## Proposed mapping ({len(proposal)} native categories, {summary['proposal']['with_path']} with a "
        f"path, {summary['proposal']['confident']} confident)\n",
        md_table(proposal_view(proposal).drop(columns="_images")),
        f"\nAdopt it after review: `prodcat mappings accept --proposed {summary.get('proposal_file', 'mapping.proposed.csv')}"
        f" --out data/mappings/{shop}.csv` (reviewed rows), or add `--min-confidence 0.9`.\n"]
    for title, column in (("Out of scope", "out_of_scope"), ("Needs review", "needs_review")):
        n = int(predictions[column].sum())
        parts += [f"\n## {title} ({n} products{', first ' + str(LIST_ROWS) if n > LIST_ROWS else ''})\n",
                  md_table(flagged_view(predictions, products, column).drop(columns="_images"))]
    return "".join(parts)


def thumbnail_uri(path) -> str:
    """A small JPEG data URI of a local image, through the guarded loader (pipelines/ingest/images.py); '' when
    the image cannot be read."""
    from pipelines.ingest.images import ImageRefused, load_image

    if not isinstance(path, str) or not path or "://" in path:
        return ""
    try:
        image = load_image(path)
    except (ImageRefused, OSError, ValueError):
        return ""
    with image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


class _Thumbnails:
    """Inline thumbnails up to MAX_THUMBNAILS per report."""

    def __init__(self):
        self.left = MAX_THUMBNAILS

    def __call__(self, paths: str) -> str:
        tags = []
        for path in [p.strip() for p in str(paths or "").split(" | ") if p.strip()]:
            uri = thumbnail_uri(path) if self.left > 0 else ""
            if uri:
                self.left -= 1
                tags.append(f'<img src="{uri}" alt="" width="{THUMBNAIL_PX}">')
        return "".join(tags)


def html_table(df: pd.DataFrame, thumbs: _Thumbnails) -> str:
    if df.empty:
        return "<p><em>none</em></p>"
    columns = [c for c in df.columns if c != "_images"] + (["images"] if "_images" in df.columns else [])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    rows = []
    for record in df.to_dict("records"):
        cells = [f"<td>{html.escape(str(record[c]))}</td>" for c in columns if c != "images"]
        if "_images" in record:
            cells.append(f"<td>{thumbs(record['_images'])}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:110em}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}th{background:#eee}"
         "img{margin-right:3px}")


def onboarding_html(summary: dict, products, predictions, proposal, quarantine) -> str:
    esc, thumbs = html.escape, _Thumbnails()
    body = [f"<h1>Onboarding {esc(summary['shop'])}</h1>",
            f"<p>Feed <code>{esc(str(summary['feed']))}</code> ({esc(str(summary['format']))}).</p>",
            html_table(counts_table(summary), thumbs), "<h2>Quarantine by reason</h2>",
            html_table(quarantine_table(quarantine), thumbs),
            f"<h2>Proposed mapping ({len(proposal)} native categories)</h2>",
            html_table(proposal_view(proposal), thumbs)]
    for title, column in (("Out of scope", "out_of_scope"), ("Needs review", "needs_review")):
        body += [f"<h2>{title} ({int(predictions[column].sum())} products)</h2>",
                 html_table(flagged_view(predictions, products, column), thumbs)]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Onboarding {esc(summary['shop'])}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")


def write_onboarding_report(out_dir, summary: dict, products, predictions, proposal, quarantine) -> dict:
    """onboarding.md and onboarding.html in `out_dir`, written atomically; -> {'report_md': path, 'report_html': path}.
    `products` and `predictions` are row-aligned."""
    from pipelines.files import atomic_write_text

    out = Path(out_dir)
    products, predictions = products.reset_index(drop=True), predictions.reset_index(drop=True)
    summary = summary | {"proposal_file": str(out / "mapping.proposed.csv")}
    md = atomic_write_text(out / "onboarding.md", onboarding_markdown(summary, products, predictions, proposal,
                                                                      quarantine))
    page = atomic_write_text(out / "onboarding.html", onboarding_html(summary, products, predictions, proposal,
                                                                      quarantine))
    return {"report_md": md, "report_html": page}
