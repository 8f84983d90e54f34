"""Reports for the people who own the taxonomy: one self-contained HTML page per node, and over all nodes the
summary (recategorisation.json / .md) with index.html. Every file is written atomically (temp file, fsync,
os.replace), so a reader never sees half a report.

    write_recategorisation_report(result, out_dir) -> out_dir/report.html (+ clusters.csv, assignments.parquet,
                                                       result.json)
    write_recategorisation_index(summary, candidates, out) -> out/index.html (+ recategorisation.json / .md)
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from pipelines.files import atomic_output, atomic_write_text
from pipelines.recategorise.nodes import node_slug
from pipelines.recategorise.result import RecategoriseResult
from pipelines.taxonomy.tree import path_str

STYLE = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc;\n"
         "padding:4px 6px;vertical-align:top} th{background:#eee}")
INDEX_STYLE = "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc;\n" \
              "padding:3px 6px}"


def _write_text(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def _img_tag(path, width=None) -> str:
    if not isinstance(path, (str, Path)) or not path or not Path(path).exists():
        return "<em>no images</em>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}"' + (f' width="{width}"' if width else "") + ">"


def _agreement_text(metrics: dict) -> str:
    agree = metrics.get("native_knn_agreement", {})
    return ", ".join(f"{scope} {v['agreement']:.1%}" for scope, v in agree.items()) or "n/a"


def granularity_text(metrics: dict) -> str:
    """'12 clusters (~16.2 products each) purity 0.583, ...': k-means purity by number of clusters."""
    return ", ".join(f"{r['k']} clusters (~{r['mean_size']:g} products each) purity {r['purity']:.3f}"
                     for r in metrics.get("purity_by_k", [])) or "n/a"


def _metric_rows(metrics: dict) -> str:
    rows = []
    method = "cascade + centroid refinement" if metrics.get("refine") else "cascade (noise -> nearest cluster)"
    runs = [(method, metrics["method"]["all"]),
            ("cascade (clustered points only)", metrics["method"]["clustered"]),
            ("baseline: k-means on raw embeddings, same k", metrics["baseline_kmeans_raw"]["all"]),
            ("ablation: k-means on SimCLR features, same k", metrics["kmeans_simclr"]["all"])]
    for name, per in runs:
        for scope, m in per.items():
            if m.get("n"):
                rows.append(f"<tr><td>{html.escape(name)}</td><td>{scope}</td><td>{m['n']}</td><td>{m['n_labels']}</td>"
                            f"<td>{m['n_clusters']}</td><td><b>{m['purity']:.3f}</b></td><td>{m['nmi']:.3f}</td>"
                            f"<td>{m['ari']:.3f}</td><td>{m['majority_share']:.3f}</td></tr>")
    return "\n".join(rows)


def _cluster_rows(clusters: pd.DataFrame) -> str:
    rows = []
    for r in clusters.itertuples():
        samples = "<br>".join(html.escape(str(s)) for s in r.samples)
        rows.append(
            f"<tr><td>{r.cluster_id}</td><td><b>{html.escape(r.name)}</b><br><small>{html.escape(', '.join(r.terms))}"
            f"</small></td><td>{r.size}<br><small>{r.share:.1%}</small></td><td>{r.cohesion:.3f}</td>"
            f"<td>{html.escape(str(r.lineage))}</td><td>{html.escape(str(r.top_native))}<br><small>purity "
            f"{'' if r.native_purity is None else f'{r.native_purity:.2f}'}</small></td>"
            f"<td><small>{samples}</small></td><td>{_img_tag(r.image_grid, 200)}</td></tr>")
    return "".join(rows)


def _node_page(result: RecategoriseResult) -> str:
    node = html.escape(path_str(result.node))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Recategorisation: {node}</title>
<style>{STYLE}</style></head><body>
<h1>Proposed sub-categories for <code>{node}</code></h1>
<p>{len(result.products)} products, {len(result.clusters)} clusters, noise {result.noise['count']}
({result.noise['share']:.1%}) &mdash; noise is reported, never hidden; evaluation below shows both ways.
Products left out: {len(result.failures)}. Run time: {html.escape(json.dumps(result.timings))}.</p>
<h2>UMAP view</h2>{_img_tag(result.plots.get('umap'))}
<h2>Agreement with the shops' own fine labels</h2>
<p>Native labels were not used to form clusters. Each shop is scored against its own vocabulary; overall = purity over all labelled products (majority label per cluster and shop), NMI/ARI weighted by products per shop.</p>
<table><tr><th>clustering</th><th>scope</th><th>n</th><th>native labels</th><th>clusters</th><th>purity</th>
<th>NMI</th><th>ARI</th><th>majority-label share</th></tr>{_metric_rows(result.metrics)}</table>
<p>Purity grows with the number of clusters whatever their quality (k-means on the clustering features):
{html.escape(granularity_text(result.metrics))}.</p>
<p>How consistent the native labels themselves are: {html.escape(_agreement_text(result.metrics))} of labelled
products carry the majority label of their 10 nearest same-shop neighbours (raw embeddings). Purity far above this
needs clusters of about ten products.</p>
<h2>Clusters (proposals)</h2>
<table><tr><th>id</th><th>proposed name / distinctive terms</th><th>size</th><th>cohesion</th><th>cascade path</th>
<th>top native label</th><th>typical products</th><th>images</th></tr>{_cluster_rows(result.clusters)}</table>
<h2>Cascade decisions</h2><pre>{html.escape(json.dumps(result.steps, indent=1))}</pre>
</body></html>"""


def write_recategorisation_report(result: RecategoriseResult, out_dir: str | Path) -> str:
    """Self-contained HTML (plots and grids inlined as base64) for the people who own the taxonomy, plus the
    node's clusters.csv and assignments.parquet (what `prodcat taxonomy accept` reads) and result.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "clusters.csv") as tmp:
        result.clusters.drop(columns=["samples"]).to_csv(tmp, index=False)
    with atomic_output(out / "assignments.parquet") as tmp:
        result.products.to_parquet(tmp, index=False)
    path = _write_text(out / "report.html", _node_page(result))
    result.report_path = str(path)
    _write_text(out / "result.json", json.dumps(result.summary(), indent=2, default=str))
    return str(path)


def recategorisation_markdown(summary: dict) -> str:
    """Per node and shop: noise, purity / NMI / ARI of the cascade vs k-means on the raw embeddings (same k),
    purity of the clustered products only, native-label agreement and run time; then purity by granularity."""
    lines = ["| node | scope | n | labels | clusters | noise | purity (cascade / k-means raw) | NMI | ARI | "
             "purity clustered-only | label 10-NN agreement | time s |", "|---" * 12 + "|"]
    for node, s in summary.items():
        m = s["metrics"]
        for scope, a in m["method"]["all"].items():
            b, c = m["baseline_kmeans_raw"]["all"][scope], m["method"]["clustered"].get(scope, {})
            agree = m.get("native_knn_agreement", {}).get(scope, {}).get("agreement", float("nan"))
            noise = s["noise"].get("by_platform", {}).get(scope, s["noise"]["share"])  # overall: the node's share
            lines.append(f"| {node} | {scope} | {a['n']} | {a['n_labels']} | {a['n_clusters']} | "
                         f"{noise:.1%} | {a['purity']:.3f} / {b['purity']:.3f} | "
                         f"{a['nmi']:.3f} / {b['nmi']:.3f} | {a['ari']:.3f} / {b['ari']:.3f} | "
                         f"{c.get('purity', float('nan')):.3f} | {agree:.3f} | {s['timings']['total_s']} |")
    for node, s in summary.items():  # purity only means something next to the granularity it is measured at
        lines += ["", f"{node}, k-means purity on the clustering features by number of clusters: "
                      f"{granularity_text(s['metrics'])}"]
    return "\n".join(lines) + "\n"


def _index_page(summary: dict, candidates: pd.DataFrame | None, markdown: str) -> str:
    links = "".join(f'<li><a href="{node_slug(node)}/report.html">{html.escape(node)}</a> &mdash; '
                    f'{s["n_clusters"]} proposals, noise {s["noise"]["share"]:.1%}</li>' for node, s in summary.items())
    lines = markdown.splitlines()
    md_rows = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|"))
                      + "</tr>" for i, line in enumerate(lines) if i != 1 and line.startswith("|"))
    notes = "".join(f"<p>{html.escape(line)}</p>" for line in lines if line and not line.startswith("|"))
    cand = candidates.to_html(index=False, float_format=lambda v: f"{v:.3f}") if candidates is not None else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Recategorisation</title>
<style>{INDEX_STYLE}</style></head><body><h1>Recategorisation of shallow taxonomy nodes</h1>
<h2>Reports per node</h2><ul>{links}</ul>
<h2>Agreement with native fine labels: cascade vs k-means on raw embeddings (same k)</h2><table>{md_rows}</table>
{notes}
<h2>Candidate nodes (automatic detection)</h2>{cand}</body></html>"""


def write_recategorisation_index(summary: dict, candidates: pd.DataFrame | None, out: str | Path) -> Path:
    """recategorisation.json / .md and index.html (metrics per node vs the baseline, candidate nodes, links)."""
    out = Path(out)
    markdown = recategorisation_markdown(summary)
    _write_text(out / "recategorisation.json", json.dumps(summary, indent=2, default=str))
    _write_text(out / "recategorisation.md", markdown)
    return _write_text(out / "index.html", _index_page(summary, candidates, markdown))
