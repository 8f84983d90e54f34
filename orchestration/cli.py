"""`prodcat` command line, an entry point: it builds the run's Settings once (flags over environment over defaults)
and passes them down. Every command works on the embedded sample unless --data (or PRODCAT_DATA) says otherwise."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pipelines.settings import ROOT, Settings, settings_from


def build_settings(args) -> Settings:
    """Settings for this command: its --data / --seed flags over the environment (PRODCAT_*) over the defaults."""
    return settings_from(os.environ, data_root=getattr(args, "data", None) or None,
                         seed=getattr(args, "seed", None), quiet=True if getattr(args, "quiet", False) else None)


# library chatter off by default (a user's own setting wins): MLflow's INFO lines and its download bars
QUIET_LIBRARIES = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                   "TOKENIZERS_PARALLELISM": "false"}


def quiet_libraries(environ=os.environ) -> None:
    for name, value in QUIET_LIBRARIES.items():
        environ.setdefault(name, value)


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or ROOT / ".dagster_home")


def cmd_normalize(args) -> int:
    from pipelines.ingest.normalize import normalize_platform

    result = normalize_platform(args.platform, Path(args.input))
    out = result.write(args.out)
    cov = result.coverage
    print(json.dumps({k: cov.get(k) for k in ("platform", "rows_in", "rows_normalised", "rows_quarantined",
                                              "fashion_rows", "fashion_mapped_share", "unmapped_by_reason",
                                              "quarantined_by_kind", "image_status", "splits")}, indent=2))
    for warning in cov.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {out}/products.parquet, quarantine.parquet, coverage.json")
    return 0


def cmd_run(args) -> int:
    from orchestration.run import run_main

    settings = build_settings(args)
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    run_main(settings, dagster_home(), executor=args.executor, only=only)
    return 0


def cmd_benchmark(args) -> int:
    """The whole graph on a data root (default the full benchmark), then the report copied to --out."""
    import shutil

    from orchestration.run import run_main

    settings = build_settings(args)
    run_main(settings, dagster_home())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted((settings.work_dir / "report").iterdir()):  # tables, sections and the PNGs they link
        if f.suffix in (".json", ".md", ".png"):
            shutil.copy(f, out / f.name)
    print((out / "benchmark.md").read_text())
    return 0


def cmd_bench_embed(args) -> int:
    from pipelines.bench.embed import main as bench

    return bench(args, build_settings(args))


def cmd_bench_capacity(args) -> int:
    from pipelines.bench.capacity import main as capacity

    return capacity(args, build_settings(args))


def cmd_bench_infer(args) -> int:
    from pipelines.bench.infer import main as bench

    return bench(args, build_settings(args))


def cmd_classify(args) -> int:
    from pipelines.adapt.onboarding import classify_classifier
    from pipelines.inference.export import checked_outputs, classify_export, classify_inputs

    settings = build_settings(args)
    checked_outputs(Path(args.out), classify_inputs(settings, Path(args.input), args.model))  # cheapest failure first
    # a shop the champion never trained on is answered by the classifier adapted to it (unless --model says which)
    adapted = None if args.model or args.no_adapt else classify_classifier(args.platform, Path(args.input), settings)
    summary = classify_export(args.platform, Path(args.input), Path(args.out), settings, model_dir=args.model,
                              mode=args.stage, progress=not args.quiet, classifier=adapted)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_serve(args) -> int:
    from pipelines.inference.service import serve

    token = args.token or os.environ.get("PRODCAT_TOKEN") or None  # required to bind beyond loopback
    return serve(args.host, args.port, build_settings(args), model_dir=args.model, mode=args.stage, token=token,
                 review_dir=args.review, review_db=args.review_db,
                 review_export=(args.review_platform, Path(args.review_input)) if args.review_input else None)


def cmd_bench_serve(args) -> int:
    from pipelines.bench.serve import main as bench

    return bench(args, build_settings(args))


def cmd_recategorise(args) -> int:
    from pipelines.recategorise.run import run_recategorisation

    settings = build_settings(args)
    overrides = json.loads(args.config) if args.config else None
    print(f"prodcat recategorise on {settings.data_root} -> {args.out} (store {settings.work_dir / 'store'})")
    run_recategorisation(settings.data_root, Path(args.out), args.node, overrides, settings.work("store"),
                         threads=settings.threads, taxonomy_path=settings.taxonomy_path)
    print(f"wrote {Path(args.out) / 'index.html'}")
    return 0


def cmd_taxonomy(args) -> int:
    from pipelines.taxonomy.tree import load_taxonomy

    if args.action == "accept":
        from pipelines.taxonomy.versions import accept_from_report

        result = accept_from_report(args.report, args.node, args.clusters, args.out, args.names, args.path)
        print(json.dumps(result, indent=2))
        return 0
    tax = load_taxonomy(args.path)
    print(json.dumps({"name": tax.name, "version": tax.version, "size": tax.size_per_level(),
                      "shallow": [" > ".join(s) for s in tax.shallow]}, indent=2))
    return 0


def cmd_onboard(args) -> int:
    from pipelines.onboard.run import onboard_shop
    from pipelines.onboard.scope import default_google_taxonomy

    from pipelines.adapt.onboarding import onboarding_classifier

    if not args.shop or not args.feed or not args.out:
        raise ValueError("onboard needs --shop NAME --feed FILE --out DIR (or: prodcat onboard measure ...)")
    settings = build_settings(args)
    # a new shop is classified by the model adapted to its own unlabelled products (unless --model / --no-adapt)
    adapted = None if args.model or args.no_adapt else onboarding_classifier(args.shop, Path(args.feed), args.format,
                                                                             settings)
    summary = onboard_shop(args.shop, Path(args.feed), args.format, Path(args.out), settings, classifier=adapted,
                           model_dir=args.model, mode=args.stage, network=not args.no_network,
                           google_taxonomy=args.google_taxonomy or default_google_taxonomy(),
                           progress=not args.quiet)
    print(json.dumps({k: v for k, v in summary.items() if k != "classifier"}, indent=2, default=str))
    _register_onboarded_shop(args.shop, build_settings(args))
    return 0


def _register_onboarded_shop(shop: str, settings: Settings) -> None:
    """A shop whose export and contract are in the data root becomes a Dagster partition now; otherwise say how."""
    from orchestration.partitions import known_shops, register_shops
    from orchestration.runners import project_instance

    if shop in known_shops(settings.data_root, settings.shops_dir):
        with project_instance(dagster_home()) as instance:
            register_shops(instance, [shop])
        print(f"registered shop {shop!r} as a partition of the pipeline")
    else:
        print(f"to train on {shop!r} too: put its export under {settings.data_root / shop}/ with a contract "
              f"data/shops/{shop}.yaml (format: google-tsv | google-xml | shopify | csv ...) and run `prodcat run`")


def cmd_onboard_measure(args) -> int:
    from pipelines.onboard.measure import measure_onboarding
    from pipelines.onboard.scope import default_google_taxonomy

    report = measure_onboarding(build_settings(args), Path(args.out), shops=args.shop or None,
                                modalities=tuple(args.modalities.split(",")),
                                google_taxonomy=args.google_taxonomy or default_google_taxonomy(),
                                benchmark_md=args.benchmark_md or None)
    print(Path(report["files"]["md"]).read_text())
    print(f"wrote {report['files']['json']} and the 'onboarding' section of {report['files']['benchmark_md']}")
    return 0


def cmd_adapt_measure(args) -> int:
    from pipelines.adapt.active import parse_label_fractions
    from pipelines.adapt.measure import (AdaptMeasureConfig, measure_adaptation, parse_augment, parse_centres,
                                         parse_fusions)
    from pipelines.adapt.pseudo_labels import PseudoLabelConfig

    centres = parse_centres(args.centres)
    cfg = AdaptMeasureConfig(centres=centres, rounds=args.rounds, augment=parse_augment(args.augment),
                             fusions=parse_fusions(args.fusion),
                             pseudo=PseudoLabelConfig(precision=args.precision),
                             max_epochs=args.max_epochs, label_fractions=parse_label_fractions(args.label_fractions))
    report = measure_adaptation(build_settings(args), Path(args.out), shops=args.shop or None, cfg=cfg,
                                holdouts=args.holdout or None, benchmark_md=args.benchmark_md or None,
                                jobs=max(1, args.jobs))
    print(Path(report["files"]["md"]).read_text())
    print(f"wrote {report['files']['json']} and the 'adaptation' section of {report['files']['benchmark_md']}")
    return 0


def cmd_mappings_accept(args) -> int:
    from pipelines.onboard.mapping_proposal import accept_mapping_proposal
    from pipelines.taxonomy.tree import load_taxonomy

    summary = accept_mapping_proposal(Path(args.proposed), Path(args.out), reviewed_only=args.min_confidence is None,
                                      min_confidence=args.min_confidence,
                                      taxonomy=load_taxonomy(args.taxonomy) if args.taxonomy else None)
    print(json.dumps(summary, indent=2))
    return 0


def _decision_store(args):
    from pipelines.review.store import DecisionStore, default_review_db
    from pipelines.taxonomy.tree import load_taxonomy

    settings = build_settings(args)
    return DecisionStore(args.db or default_review_db(settings.work_dir), load_taxonomy(settings.taxonomy_path))


def cmd_review_export(args) -> int:
    from pipelines.review.label_studio import export_label_studio_tasks
    from pipelines.taxonomy.tree import load_taxonomy

    summary = export_label_studio_tasks(Path(args.source), args.queue, Path(args.out),
                                        load_taxonomy(build_settings(args).taxonomy_path))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_review_import(args) -> int:
    from pipelines.review.label_studio import import_label_studio

    store = _decision_store(args)
    n = import_label_studio(Path(args.file), store, args.model_version, args.reviewer)
    print(f"recorded {n} decisions in {store.url}")
    return 0


def cmd_review_mappings(args) -> int:
    from pipelines.review.mapping_decisions import write_reviewed_mapping

    store = _decision_store(args)
    summary = write_reviewed_mapping(store.decisions(), args.shop, Path(args.out), store.taxonomy)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv=None) -> int:
    from orchestration.cli_parser import build_parser
    from pipelines.classify.registry import RegistryError
    from pipelines.ingest.shops import BadExport

    from orchestration.run import quiet_third_party

    args = build_parser(sys.modules[__name__]).parse_args(argv)
    quiet_libraries()
    quiet_third_party()
    try:
        return args.fn(args)
    except (BadExport, FileNotFoundError, NotADirectoryError, PermissionError, ValueError, RegistryError) as e:
        print(f"prodcat {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
