"""The "review" section of the benchmark report: how the model's accuracy on the items reviewers decided moves from
model version to version (issue 20), from the append-only decision table."""
from __future__ import annotations

SECTION = "review"


def review_section(decisions) -> str:
    """Markdown: per model version, products reviewed, accepted, corrected, out of scope and the accuracy
    accepted / (accepted + corrected); a sentence when no product was reviewed yet."""
    from pipelines.review.labels import review_accuracy_by_version

    lines = ["## Review loop: accuracy on reviewed products, by model version", ""]
    table = review_accuracy_by_version(decisions)
    if not len(table):
        return "\n".join(lines + ["No product reviewed yet (`prodcat serve --review DIR`, then /review)."])
    lines += ["Latest answer per product and model version; accuracy = accepted / (accepted + corrected), "
              "out-of-scope answers counted apart. Reviewed products are the model's hardest (flagged for review or "
              "picked to label first), so this accuracy is far below the test split's.", "",
              "| model version | reviewed | accepted | corrected | out of scope | accuracy % |", "|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        acc = "n/a" if r.accuracy is None or r.accuracy != r.accuracy else f"{100 * r.accuracy:.2f}"
        lines.append(f"| {str(r.model_version).replace('|', '/')} | {r.reviewed} | {r.accepted} | {r.corrected} | "
                     f"{r.out_of_scope} | {acc} |")
    return "\n".join(lines)
