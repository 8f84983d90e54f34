"""`prodcat run`: the main job from the command line, with a progress bar per stage and a short summary at the end."""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from pipelines.settings import Settings

NOISY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "mlflow", "alembic",
                 "urllib3", "numba", "great_expectations", "distributed", "dagster")


def quiet_third_party() -> None:
    """Keep library banners, tips and deprecation chatter off the console; our own output and errors stay."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)


def progress_bars(enabled: bool):
    """A tqdm bar per stage (on stderr), or None when progress is off."""
    if not enabled:
        return None
    from tqdm import tqdm

    return lambda total, desc: tqdm(total=total, desc=desc[:60], unit="part", file=sys.stderr, leave=True,
                                    bar_format="{desc:<60} {bar:20} {n_fmt}/{total_fmt} [{elapsed}]")


def run_main(settings: Settings, dagster_home: Path, executor: str = "in_process", only: list[str] | None = None,
             log=print) -> dict:
    """Every stage of the main job (or just the assets in `only`) on `executor`; prints the run summary."""
    from dagster import AssetSelection

    from orchestration.definitions import build_definitions
    from orchestration.main_job import check_asset_names, run_plan, stage_plan
    from orchestration.runners import job_cluster, project_instance, stage_runner
    from orchestration.summary import print_summary

    quiet_third_party()
    if executor == "dask" and not settings.dask_scheduler:
        with job_cluster(settings) as clustered:  # one LocalCluster for every stage of the job
            return run_main(clustered, dagster_home, executor, only, log)
    defs = build_definitions(settings.with_(quiet=True))  # one bar per stage here, none inside the steps
    selection = AssetSelection.assets(*check_asset_names(defs, only)) if only else None
    plan = stage_plan(defs, selection)
    log(f"prodcat main job on {settings.data_root} -> {settings.work_dir} (executor: {executor}, "
        f"{len(plan)} stages)")
    summary = run_plan(defs, plan, project_instance(dagster_home), run=stage_runner(executor, settings),
                       progress=progress_bars(not settings.quiet), log=log)
    print_summary(summary, settings, log=log)
    return summary
