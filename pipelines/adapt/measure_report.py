"""The "adaptation" section of the benchmark report: zero-label hF1 per held-out shop before and after adaptation,
per strategy (the ablation: each ingredient on and off), per-level accuracy and what self-training added."""
from __future__ import annotations

from pipelines.reports.sections import met_word, pct


def ablation_table(report: dict) -> list[str]:
    shops = list(report["shops"])
    summary = report["summary"]
    lines = ["| strategy | " + " | ".join(shops) + " | mean | in-distribution val hF1 % (training shops) |",
             "|---" * (len(shops) + 3) + "|"]
    for name, mean in summary["mean_test_hF1"].items():
        tag = " (before)" if name == summary["before"] else " (**after**, primary)" if name == summary["after"] else ""
        variants = [report["shops"][s]["variants"][name] for s in shops]
        val = " / ".join(pct(v["classifier"].get("val_hF1")) for v in variants)
        lines.append(f"| {name}{tag} | " + " | ".join(pct(v["test"].get("hF1")) for v in variants)
                     + f" | {pct(mean)} | {val} |")
    chosen = summary.get("chosen_on_other_holdouts") or {}
    if chosen:
        picks = ", ".join(f"{s}: {p['strategy']} {pct(p['test_hF1'])}" for s, p in chosen["per_shop"].items())
        lines += ["", f"Strategy chosen per shop on the *other* holdouts' test hF1 (this shop's labels unread): "
                      f"{picks}; mean {pct(chosen['mean_test_hF1'])}, lowest {pct(chosen['min_test_hF1'])}."]
    return lines


def level_table(report: dict) -> list[str]:
    lines = ["| unseen shop | strategy | scored products | L1 acc % | L2 acc % | L3 acc % | exact at label depth % | "
             "hF1 all mapped % |", "|---|---|---|---|---|---|---|---|"]
    for shop, cell in report["shops"].items():
        for name, v in cell["variants"].items():
            t = v["test"]
            lines.append(f"| {shop} | {name} | {t.get('n', 0)} | {pct(t.get('acc_L1'))} | {pct(t.get('acc_L2'))} | "
                         f"{pct(t.get('acc_L3'))} | {pct(t.get('exact_at_label_depth'))} | "
                         f"{pct(v['all'].get('hF1'))} |")
    return lines


def pseudo_lines(report: dict) -> list[str]:
    lines = ["", "Self-training, what each round added (threshold: the lowest calibrated path probability keeping "
             f"{100 * report['config']['pseudo']['precision']:.1f}% precision on the training shops' validation rows):",
             ""]
    for shop, cell in report["shops"].items():
        for name, v in cell["variants"].items():
            p = v["pseudo"]
            if p:
                lines.append(f"- {shop}, {name}: threshold {p['threshold']}, {p['groups_kept']} of {p['groups']} "
                             f"groups ({p['groups_confident']} confident), {p['products']} products "
                             f"({pct(p['share'])}%), {p['leaves']} leaves")
    return lines


def curve_lines(report: dict) -> list[str]:
    """The labelling curves (adapt/active.py): test hF1 with a share of the held-out shop's groups labelled, random
    groups vs the active loop's picks."""
    curves = report["summary"].get("curves") or {}
    if not curves:
        return []
    shops = [s for s, c in report["shops"].items() if c.get("curves")]
    target = report["targets"].get("active_1pct_mean_test_hF1", 0.95)
    lines = ["", "Labelling curves: test hF1 % with a share of the held-out shop's train-split product groups "
             "labelled by a person (simulated by its hand labels), the model retrained from the primary strategy's "
             "pseudo-labels each time; random groups (nested sets) vs the active loop (the current model's most "
             f"uncertain groups, one per group, spread over its predicted level-2 nodes). Target: active at 1% mean "
             f">= {100 * target:.0f}% ({met_word(curves.get('active_1pct_met'))}: "
             f"{pct(curves.get('active_1pct_mean_test_hF1'))}).", "",
             "| labelled groups % | random mean | active mean | " + " | ".join(f"{s} random / active (groups)"
                                                                      for s in shops) + " |",
             "|---" * (len(shops) + 3) + "|"]
    for key in curves["mean_test_hF1"]["random"]:
        cells = []
        for shop in shops:
            by = {st: {f"{p['fraction']:g}": p for p in report["shops"][shop]["curves"][st]}
                  for st in ("random", "active")}
            r, a = by["random"].get(key, {}), by["active"].get(key, {})
            cells.append(f"{pct(r.get('test', {}).get('hF1'))} / {pct(a.get('test', {}).get('hF1'))} "
                         f"({a.get('groups_labelled', r.get('groups_labelled', 0))})")
        lines.append(f"| {100 * float(key):g} | {pct(curves['mean_test_hF1']['random'].get(key))} | "
                     f"{pct(curves['mean_test_hF1']['active'].get(key))} | " + " | ".join(cells) + " |")
    return lines


def routing_lines(report: dict) -> list[str]:
    """Routing under shift (adapt/shift_routing.py): per holdout and router, what is routed to stage 2, the routed
    answer's test hF1 against stage 2 alone, and how many of its errors needs_review flags."""
    shops = {s: c["routing"] for s, c in report["shops"].items() if c.get("routing")}
    if not shops:
        return []
    t, met = report["targets"], report["summary"].get("met", {})
    budget = next(iter(shops.values())).get("router", {}).get("budget")
    lines = ["", "Two-stage routing under shift: stage 1 = the lexical classifier of the training shops, stage 2 = the "
             "adapted classifier (primary strategy). *in_distribution*: today's threshold, chosen on the training "
             "shops' validation rows (stage1.yaml max_drop), needs_review = the per-level abstention. *agreement*: the "
             "lowest stage-1 confidence above which stage 1's path differs from stage 2's on at most "
             f"{pct(budget)}% of the new shop's unlabelled products; needs_review = abstention, or a routed product "
             "whose stages disagree or whose stage-2 confidence is below the threshold keeping "
             f"{pct(next(iter(shops.values())).get('router', {}).get('review_precision'))}% precision on the "
             f"training shops' validation rows. Targets (agreement, every holdout): routed within "
             f"{t.get('routed_within_points')} points of stage 2 ({met_word(met.get('routed_within_points'))}), "
             f"flagged products hold >= {pct(t.get('review_holds_errors'))}% of its errors "
             f"({met_word(met.get('review_holds_errors'))}).", "",
             "| unseen shop | router | routed % | routed hF1 % | stage-2 hF1 % | diff (points) | flagged % | "
             "errors caught % |", "|---|---|---|---|---|---|---|---|"]
    for shop, routing in shops.items():
        for name in ("in_distribution", "agreement"):
            r = routing.get(name)
            if r:
                lines.append(f"| {shop} | {name} | {pct(r['routed_share'])} | {pct(r['hF1_routed'])} | "
                             f"{pct(r['hF1_stage2'])} | {r['diff_points']:+.2f} | {pct(r['review_share'])} | "
                             f"{pct(r['errors_flagged_share'])} |")
    return lines


def adaptation_section(report: dict) -> str:
    s, t = report["summary"], report["targets"]
    where = {c["scored_on"] for c in report["shops"].values()}
    head = [
        "## Zero-label adaptation to an unseen shop (leave-one-platform-out)",
        "",
        "Each shop in turn is the new shop: the classifier (lexical + MiniLM text, late fusion) trains on the other "
        "shops; the held-out shop contributes only its unlabelled products (centring means, pseudo-labels). "
        "Thresholds, early stopping and temperatures read the training shops' validation rows. Scored on the "
        f"held-out shop's {'grouped test split' if where == {'test'} else 'mapped products'} ({', '.join(sorted(where))}): "
        "hF1 at the label's known depth (deeper predictions cut to the hand path's depth).",
        "",
        f"Targets for the primary strategy ({s['after']}): mean >= {100 * t['mean_test_hF1']:.0f}% "
        f"({met_word(s['met']['mean_test_hF1'])}: {pct(s['mean_test_hF1'].get(s['after']))}), every shop >= "
        f"{100 * t['every_shop_test_hF1']:.0f}% ({met_word(s['met']['every_shop_test_hF1'])}). Before adaptation: "
        f"{pct(s['mean_test_hF1'].get(s['before']))}.",
        "",
        "Ablation, test hF1 % (each ingredient on and off):",
        "",
    ]
    return "\n".join(head + ablation_table(report) + ["", "Per-level accuracy on the same products:", ""]
                     + level_table(report) + pseudo_lines(report) + curve_lines(report) + routing_lines(report))
