"""The "onboarding" section of the benchmark report: issue 17's targets per held-out shop, met or not."""
from __future__ import annotations

from pipelines.reports.sections import met_word, pct


def targets_table(report: dict) -> list[str]:
    t = report["targets"]
    lines = [f"| unseen shop | products | proposal correct % (>= {100 * t['mapping_correct']:.0f}) | confident rows "
             f"correct % (>= {100 * t['confident_correct']:.0f}) [share of products] | out-of-scope AUROC "
             f"(>= {t['scope_auroc']}) [pos/neg] | in-scope flagged % (<= {100 * t['in_scope_flag_rate']:.0f}) | "
             "out-of-scope recall % |", "|---|---|---|---|---|---|---|"]
    for shop, cell in report["shops"].items():
        m, s, met = cell["mapping"], cell["scope"], cell["met"]
        auroc = "n/a" if s["auroc"] is None else f"{s['auroc']:.4f}"
        lines.append(f"| {shop} | {m['products']} | {pct(m['correct'])} ({met_word(met['mapping_correct'])}) | "
                     f"{pct(m['confident_correct'])} ({met_word(met['confident_correct'])}) "
                     f"[{pct(m['confident_share'])}] | {auroc} ({met_word(met['scope_auroc'])}) "
                     f"[{s['out_of_scope']}/{s['in_scope']}] | {pct(s['in_scope_flag_rate'])} "
                     f"({met_word(met['in_scope_flag_rate'])}) | {pct(s['out_of_scope_recall'])} |")
    return lines


def errors_lines(report: dict) -> list[str]:
    lines = ["", "Largest disagreements with the hand mapping (products):", "",
             "| unseen shop | native category | hand mapping | proposed | products |", "|---|---|---|---|---|"]
    for shop, cell in report["shops"].items():
        for e in cell["mapping"]["top_errors"][:5]:
            cells = [shop, e["native_path"], e["hand"], e["proposed"], str(e["products"])]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def onboarding_section(report: dict) -> str:
    """The section body: how it was measured, the targets table, the largest disagreements."""
    shops = list(report["shops"])
    lines = ["## Onboarding a new shop (leave-one-platform-out)", "",
             f"Each shop in turn is onboarded from its raw export as if new ({', '.join(shops)}): a classifier "
             f"({'+'.join(report['modalities'])}, late fusion) and the out-of-scope detector are trained on the other "
             "shops only; the held-out shop's mapping and labels are read only to score. Proposal correct = share of "
             "the shop's mapped products whose proposed row (most specific decided native category) gives the hand "
             "mapping's path at the depth the hand mapping gives; confident rows = the rows the proposal marks "
             "confident. Out-of-scope AUROC: hand-mapped `unmapped: out of scope` products against mapped ones; the "
             "flag threshold was chosen on the training shops' validation rows (at most "
             f"{100 * next(iter(report['shops'].values()))['detector']['max_flag_rate']:.0f}% of their in-scope "
             "products flagged).", ""]
    lines += targets_table(report)
    lines += ["", "Proposal correct by the depth of the hand path: " + "; ".join(
        f"{shop} " + ", ".join(f"L{d} {pct(v)}" for d, v in cell["mapping"]["by_hand_depth"].items())
        for shop, cell in report["shops"].items()) + "."]
    lines += roundtrip_lines(report)
    lines += ablation_lines(report)
    lines += errors_lines(report)
    return "\n".join(lines)


def ablation_lines(report: dict) -> list[str]:
    cells = [(shop, c["ablation"]) for shop, c in report["shops"].items() if c.get("ablation")]
    if not cells:
        return []
    primary = report["proposal_config"]["name_weight"]
    lines = ["", f"Ablation, the same classifications proposed with the other name vote (primary: name weight "
             f"{primary:g}; 0 = the category's products only, 0.5 = its name, classified like a title, also votes "
             "with half the weight of its products): proposal correct % / confident rows correct % [share]:", ""]
    lines += [f"- {shop} (name weight {a['name_weight']:g}): {pct(a['correct'])} / {pct(a['confident_correct'])} "
              f"[{pct(a['confident_share'])}]" for shop, a in cells]
    return lines


def roundtrip_lines(report: dict) -> list[str]:
    """Target 3: each shop's export written as every feed format and onboarded again, compared product by product."""
    cells = [(shop, c["roundtrip"]) for shop, c in report["shops"].items() if c.get("roundtrip")]
    if not cells:
        return []
    lines = ["", "Feed round trip: each unseen shop's export written by the feed writers (scripts/export_feed.py) as a "
             "Google TSV, a Google RSS XML and a Shopify CSV, each read back and onboarded by the same models; "
             "products matched on their id (fields and image bytes compared), then predictions (path, flags, stage, "
             "confidences) and the proposed mapping:", "",
             "| unseen shop | feed | products native / feed / matched | text fields equal [from group] | "
             "images equal [from group] | "
             "predictions equal | max confidence diff | proposal rows equal | same products and predictions |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shop, rt in cells:
        for fmt, c in rt.items():
            if fmt == "met":
                continue
            p, q, m = c["products"], c["predictions"], c["proposal"]
            fields = [k for k in p["equal"] if k != "image"]
            lines.append(f"| {shop} | {fmt} | {p['native']} / {p['feed']} / {p['matched']} | "
                         f"{min(p['equal'][k] for k in fields)} [{sum(p['from_group'][k] for k in fields)}] | "
                         f"{p['equal']['image']} [{p['from_group']['image']}] | {min(q['equal'].values())} | "
                         f"{q['max_confidence_diff']} | {m['equal_rows']} / {m['rows']} | "
                         f"{met_word(c['identical'])} |")
    lines += ["", "[from group]: empty in the native export, filled in the feed - Shopify gives a variant row that "
              "leaves a product field empty (Vendor, Image Src) its product's value, and a native image that could not "
              "be read (so not exported) comes back as a sibling's. Counted apart, not as equal; 'met' accepts them."]
    return lines
