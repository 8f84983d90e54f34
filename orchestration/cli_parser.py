"""The `prodcat` argument parser (the commands themselves are in orchestration/cli.py)."""
from __future__ import annotations

import argparse

from pipelines.settings import PLATFORMS


def build_parser(commands) -> argparse.ArgumentParser:
    """The argument parser; `commands` is the module holding the cmd_* functions (orchestration.cli)."""
    ap = argparse.ArgumentParser(prog="prodcat", description=commands.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (add_pipeline_commands, add_bench_commands, add_model_commands, add_taxonomy_commands,
                add_onboard_commands, add_review_commands, add_adapt_commands):
        add(sub, commands)
    return ap


def add_pipeline_commands(sub, commands) -> None:
    p = sub.add_parser("normalize", help="raw shop export -> products.parquet, quarantine.parquet, coverage.json")
    p.add_argument("--platform", required=True, help="a shop with a column contract in data/shops/ (e.g. " + ", ".join(PLATFORMS) + ")")
    p.add_argument("--input", required=True, help="the shop's raw export directory")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=commands.cmd_normalize)

    p = sub.add_parser("run", help="materialise every asset (Dagster, in process) and print a summary")
    p.add_argument("--data", default="", help="'sample' (default), 'benchmark' or a directory of raw exports")
    p.add_argument("--executor", choices=["in_process", "multiprocess", "dask"], default="in_process",
                   help="dask: on $PRODCAT_DASK_SCHEDULER or a LocalCluster of $PRODCAT_DASK_WORKERS (2) processes")
    p.add_argument("--only", default="", help="comma-separated asset names: run just those (in graph order), e.g. "
                   "holdout_training_set,holdout_fewshot,holdout_evaluations,holdout_report")
    p.add_argument("--seed", default=None, help="training seed (default: PRODCAT_SEED or 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (also PRODCAT_QUIET=1)")
    p.set_defaults(fn=commands.cmd_run)

    p = sub.add_parser("benchmark", help="run every strategy and baseline on a data root; write benchmark.json/.md")
    p.add_argument("--data", default="benchmark", help="'benchmark' (default), 'sample' or a directory of raw exports")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=commands.cmd_benchmark)



def add_bench_commands(sub, commands) -> None:
    p = sub.add_parser("bench", help="throughput benchmarks (print figures; not tests)")
    bench = p.add_subparsers(dest="what", required=True)
    b = bench.add_parser("embed", help="end-to-end vs bare forward items/s, cold vs warm cache, peak memory")
    b.add_argument("--modality", choices=["text", "image"], default="image")
    b.add_argument("--n", type=int, default=1000)
    b.add_argument("--data", default="sample", help="'sample', 'benchmark' or a raw-export directory")
    b.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    b.set_defaults(fn=commands.cmd_bench_embed)
    b = bench.add_parser("capacity", help="per-item costs measured on the sample (1 core) -> workers (CPU/GPU) to "
                                          "embed + classify N products in T hours, full vs two-stage routed")
    b.add_argument("--n", type=int, default=256, help="sample items timed per step")
    b.add_argument("--products", type=int, default=10_000_000)
    b.add_argument("--hours", type=float, default=1.0)
    b.add_argument("--routed-share", type=float, default=None, help="default: routing.json's measured share")
    b.add_argument("--efficiency", type=float, default=0.7, help="useful share of a worker's time")
    b.add_argument("--gpu-text-per-s", type=float, default=4000.0, help="ASSUMED MiniLM texts/s per GPU")
    b.add_argument("--gpu-image-per-s", type=float, default=2000.0, help="ASSUMED EfficientNet-Lite0 images/s per GPU")
    b.add_argument("--out", default="", help="also write the figures as JSON here")
    b.set_defaults(fn=commands.cmd_bench_capacity)
    b = bench.add_parser("infer", help="two-stage inference: batch items/s (stage 1, stage 2, routed) and service "
                                       "p50/p99 latency and throughput under bounded loopback load")
    b.add_argument("--n", type=int, default=1000, help="products for the batch figures")
    b.add_argument("--requests", type=int, default=300, help="HTTP requests for the service figures")
    b.add_argument("--concurrency", type=int, default=4, help="concurrent loopback clients")
    b.add_argument("--data", default="", help="'sample' (default), 'benchmark' or a raw-export directory")
    b.set_defaults(fn=commands.cmd_bench_infer)
    b = bench.add_parser("serve", help="the HTTP service under bounded loopback load: req/s, p50/p99 and RSS for a "
                                       "text-only and a mixed (80%% single, 20%% batches of 16) load, and a soak")
    b.add_argument("--requests", type=int, default=3000, help="requests per measured phase")
    b.add_argument("--concurrency", type=int, default=16, help="concurrent loopback clients")
    b.add_argument("--products", type=int, default=2000, help="sample products the request bodies are drawn from")
    b.add_argument("--soak", type=int, default=10_000, help="requests of the RSS soak (0: none)")
    b.add_argument("--soak-seconds", type=float, default=600, help="time bound of the soak")
    b.add_argument("--max-seconds", type=float, default=300, help="time bound of each measured phase")
    b.add_argument("--model", default=None, help="stage-2 model dir (default: the registered champion)")
    b.add_argument("--stage", choices=["routed", "stage1", "stage2"], default="routed")
    b.add_argument("--data", default="", help="models of 'sample' (default) or 'benchmark' (or a data dir)")
    b.add_argument("--out", default="", help="also write the figures as JSON here")
    b.set_defaults(fn=commands.cmd_bench_serve)



def add_model_commands(sub, commands) -> None:
    p = sub.add_parser("classify", help="classify a raw shop export (two-stage: lexical model, then the champion)")
    p.add_argument("--platform", "--shop", dest="platform", required=True,
                   help="a shop with a column contract in data/shops/ (e.g. " + ", ".join(PLATFORMS) + "); a shop without "
                   "a hand mapping is classified by the model adapted to it (<work>/adapt/<shop>, made now if absent)")
    p.add_argument("--no-adapt", action="store_true", help="answer a new shop with the champion, not adapted")
    p.add_argument("--input", required=True, help="the shop's raw export directory")
    p.add_argument("--out", required=True, help="predictions file, .parquet or .csv (quarantine written beside it)")
    p.add_argument("--model", default=None, help="stage-2 model dir (default: the registered champion); with --stage stage1: the stage-1 model dir")
    p.add_argument("--stage", choices=["routed", "stage1", "stage2"], default="routed")
    p.add_argument("--data", default="", help="models of 'sample' (default) or 'benchmark' (or a data dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=commands.cmd_classify)

    p = sub.add_parser("serve", help="HTTP service: POST /classify, GET /taxonomy, GET /health (OpenAPI at /docs)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="stage-2 model dir (default: the registered champion); with --stage stage1: the stage-1 model dir")
    p.add_argument("--stage", choices=["routed", "stage1", "stage2"], default="routed")
    p.add_argument("--data", default="", help="models of 'sample' (default) or 'benchmark' (or a data dir)")
    p.add_argument("--token", default=None, help="bearer token every request but /health and /ready must carry "
                   "(default: $PRODCAT_TOKEN); required to bind beyond loopback")
    p.add_argument("--review", default=None, help="also serve the review page (/review) for this output folder of "
                   "`prodcat onboard` (or classify) holding predictions.csv")
    p.add_argument("--review-db", default=None, help="SQLAlchemy URL of the decision table (default: "
                   "sqlite:///<work>/review/decisions.db)")
    p.add_argument("--review-platform", default=None, help="with --review-input: the shop of a `prodcat classify` "
                   "output given as --review (its predictions file or folder)")
    p.add_argument("--review-input", default=None, help="the raw export that classify read (texts and images)")
    p.set_defaults(fn=commands.cmd_serve)



def add_taxonomy_commands(sub, commands) -> None:
    p = sub.add_parser("taxonomy", help="print the shared taxonomy's size per level")
    p.add_argument("--path", default=None, help="a taxonomy file (default: data/taxonomy.yaml)")
    p.set_defaults(fn=commands.cmd_taxonomy, action=None)
    actions = p.add_subparsers(dest="action")
    a = actions.add_parser("accept", help="accept recategorisation proposals into a new taxonomy version")
    a.add_argument("--report", required=True, help="a recategorisation output dir (or one node's report dir)")
    a.add_argument("--node", required=True, help="e.g. 'Footwear > Shoes'")
    a.add_argument("--clusters", required=True, type=int, nargs="+", help="cluster ids to accept")
    a.add_argument("--names", nargs="+", default=None, help="names for the new sub-nodes (default: proposed)")
    a.add_argument("--out", required=True, help="the new taxonomy file (e.g. data/taxonomy.v2.yaml) or a dir")
    # SUPPRESS: `prodcat taxonomy --path X accept ...` keeps X (a subparser default would overwrite it)
    a.add_argument("--path", default=argparse.SUPPRESS, help="the taxonomy to extend (default: data/taxonomy.yaml)")

    p = sub.add_parser("recategorise", help="cluster shallow taxonomy nodes, propose sub-categories, HTML report")
    p.add_argument("--data", default="sample", help="'sample', 'benchmark' or a directory of raw exports")
    p.add_argument("--out", required=True)
    p.add_argument("--node", action="append", default=None, help="'Footwear > Shoes' (repeatable; default: the "
                                                                 "taxonomy's shallow nodes)")
    p.add_argument("--config", default="", help='JSON overrides of models/configs/recategorise.yaml, e.g. '
                                                '\'{"simclr": {"epochs": 5}}\'')
    p.set_defaults(fn=commands.cmd_recategorise)


def add_onboard_commands(sub, commands) -> None:
    p = sub.add_parser("onboard", help="onboard a new shop from its feed: predictions, out-of-scope flags, a proposed "
                                       "mapping table and a report (no labels, no code)")
    p.add_argument("--shop", default=None, help="the new shop's name (letters, digits, '_', '-')")
    p.add_argument("--feed", default=None, help="the feed file: Google Merchant TSV/XML, Shopify CSV, or a YAML "
                                                "contract naming a CSV / JSON Lines / Parquet export")
    p.add_argument("--format", default=None, choices=["google", "google-tsv", "google-xml", "shopify", "yaml"],
                   help="default: detected from the file")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--model", default=None, help="stage-2 model dir (default: the registered champion)")
    p.add_argument("--stage", choices=["routed", "stage1", "stage2"], default="routed")
    p.add_argument("--data", default="", help="models and registered shops of 'sample' (default) or 'benchmark'")
    p.add_argument("--google-taxonomy", default=None, help="Google product taxonomy file for out-of-scope anchors "
                   "(default: ../shared/benchmark/reference/google_product_taxonomy-with-ids.en-US.txt if present)")
    p.add_argument("--no-network", action="store_true", help="do not download http(s) images (cached ones are used)")
    p.add_argument("--no-adapt", action="store_true", help="classify with the champion instead of the classifier "
                   "adapted to the new shop's unlabelled products (<work>/adapt/<shop>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=commands.cmd_onboard, action=None)
    actions = p.add_subparsers(dest="action")
    m = actions.add_parser("measure", help="issue 17's targets, leave-one-platform-out: each shop onboarded as new "
                                           "from its raw export, models trained on the others")
    m.add_argument("--data", default="benchmark", help="'benchmark' (default), 'sample' or a directory of exports")
    m.add_argument("--out", required=True, help="writes onboarding.json, onboarding.md, <shop>/ per held-out shop")
    m.add_argument("--shop", action="append", default=None, help="shops taking part (default: every registered one)")
    m.add_argument("--modalities", default="lexical,text", help="the stand-in classifier's views: lexical,text")
    m.add_argument("--google-taxonomy", default=None, help="as for onboard")
    m.add_argument("--benchmark-md", default=None, help="report to merge the 'onboarding' section into (default: "
                                                        "<work>/report/benchmark.md)")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(fn=commands.cmd_onboard_measure)

    p = sub.add_parser("mappings", help="mapping tables")
    maps = p.add_subparsers(dest="action", required=True)
    a = maps.add_parser("accept", help="adopt a reviewed mapping.proposed.csv as a shop's mapping table")
    a.add_argument("--proposed", required=True, help="a mapping.proposed.csv written by `prodcat onboard`")
    a.add_argument("--out", required=True, help="the mapping table, e.g. data/mappings/<shop>.csv (merged if it exists)")
    a.add_argument("--min-confidence", type=float, default=None, help="also adopt unreviewed decided rows whose "
                                                                      "confidence is at least this")
    a.add_argument("--taxonomy", default=None, help="taxonomy file (default: data/taxonomy.yaml)")
    a.set_defaults(fn=commands.cmd_mappings_accept)


def add_review_commands(sub, commands) -> None:
    p = sub.add_parser("review", help="the review loop: Label Studio export/import, reviewed mappings")
    review = p.add_subparsers(dest="action", required=True)
    r = review.add_parser("export", help="a review queue as Label Studio tasks (JSON with predictions) + config")
    r.add_argument("--source", required=True, help="an output folder of `prodcat onboard` (predictions.csv, ...)")
    r.add_argument("--queue", required=True, choices=["needs_review", "label_first", "mappings"])
    r.add_argument("--out", required=True, help="tasks JSON file (the labelling config is written beside it)")
    r.add_argument("--data", default="", help="'sample' (default), 'benchmark' or a data dir (taxonomy, work dir)")
    r.set_defaults(fn=commands.cmd_review_export)
    r = review.add_parser("import", help="a Label Studio JSON export back into the decision table")
    r.add_argument("file", help="Label Studio JSON export of tasks made by `prodcat review export`")
    r.add_argument("--db", default=None, help="decision table URL (default: sqlite:///<work>/review/decisions.db)")
    r.add_argument("--reviewer", default="label-studio", help="reviewer name when an annotation names none")
    r.add_argument("--model-version", default="", help="model version the annotated predictions came from")
    r.add_argument("--data", default="")
    r.set_defaults(fn=commands.cmd_review_import)
    r = review.add_parser("mappings", help="accepted mapping decisions of a shop -> its mapping table (merged)")
    r.add_argument("--shop", required=True)
    r.add_argument("--out", required=True, help="the mapping table, e.g. data/mappings/<shop>.csv")
    r.add_argument("--db", default=None, help="decision table URL (default: sqlite:///<work>/review/decisions.db)")
    r.add_argument("--data", default="")
    r.set_defaults(fn=commands.cmd_review_mappings)


def add_adapt_commands(sub, commands) -> None:
    p = sub.add_parser("adapt", help="zero-label adaptation to a shop the model never trained on (issue 18)")
    actions = p.add_subparsers(dest="action", required=True)
    m = actions.add_parser("measure", help="leave-one-platform-out: each shop adapted to as new from its unlabelled "
                                           "products; test hF1 before/after per strategy, per level, the ablation")
    m.add_argument("--data", default="benchmark", help="'benchmark' (default), 'sample' or a directory of exports")
    m.add_argument("--out", required=True, help="writes adaptation.json, adaptation.md, <shop>/ per held-out shop")
    m.add_argument("--shop", action="append", default=None, help="shops taking part (default: every registered one)")
    m.add_argument("--holdout", action="append", default=None, help="held-out shops measured (default: every shop)")
    m.add_argument("--centres", default="none", help="centring settings of the ablation, each 'none' or views "
                                                          "joined by '+' (text, lexical), e.g. none,text,text+lexical")
    m.add_argument("--rounds", type=int, default=2, help="self-training rounds (each round is a cell of the ablation)")
    m.add_argument("--precision", type=float, default=0.99, help="pseudo-label threshold: training shops' val precision")
    m.add_argument("--augment", default="off,on", help="title-style augmentation settings of the ablation: off, on or "
                                                     "off,on (each doubles the variants trained)")
    m.add_argument("--max-epochs", type=int, default=None, help="cap on training epochs (default: the config's)")
    m.add_argument("--label-fractions", default="0.005,0.01,0.02,0.05",
                   help="labelling curves (random vs active): shares of the held-out shop's train-split groups "
                        "labelled, comma-separated; '' turns the curves off")
    m.add_argument("--fusion", default="early,late", help="fusion of the lexical and text views: late, early or "
                                                    "early,late (the paper's early-vs-late claim after adaptation)")
    m.add_argument("--jobs", type=int, default=1, help="held-out shops measured at once, each in its own process "
                                                       "with one torch thread (2 on a 2-core machine)")
    m.add_argument("--benchmark-md", default=None, help="report to merge the 'adaptation' section into (default: "
                                                        "<work>/report/benchmark.md)")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(fn=commands.cmd_adapt_measure)
