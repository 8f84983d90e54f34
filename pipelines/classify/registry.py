"""MLflow tracking and the model registry: one run per trained model, and the `champion` alias.

Every function takes the tracking URI as an argument (`Settings.registry_uri` at the call site) and talks to MLflow
through an `MlflowClient` bound to it, never through the environment or mlflow's process-wide fluent state: a
Dagster definitions object built for a temporary work dir must register its champions in that dir's mlruns.db, and
two assets in one process must not log into each other's store.

The champion is read strictly. Only "no registered model" or "no alias yet" mean there is no champion
(`NoChampion`); any other registry failure (a dangling alias, a champion without its score, a broken store) raises
`RegistryError` rather than letting a worse model be promoted over a champion that could not be read.

A sqlite store records its artifacts by absolute path (file:///<work>/mlartifacts/...). A work dir copied or moved
elsewhere keeps those paths, so its registry would silently hand out another tree's model files, and its runs
would write into the other tree. So a sqlite store's artifacts must lie under its own artifact root
(<dir of mlruns.db>/mlartifacts): the champion's files are taken from there (the same relative place when the
recorded path points elsewhere, i.e. the copy's own files), and where this tree holds no copy of them the champion
is refused (`ForeignArtifacts`, naming both paths and what to do); logging into an experiment whose artifact
location is another tree's is refused too. Other stores (a tracking server) manage their own artifacts.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

REGISTERED_MODEL = "prodcat-classifier"
EXPERIMENT = "prodcat"
CHAMPION_ALIAS = "champion"
SCORE_TAG = "val_hF1"


class NoChampion(FileNotFoundError):
    """Nothing holds the `champion` alias yet: no model was registered, or none was promoted."""


class RegistryError(RuntimeError):
    """The registry answered with something other than "does not exist": it cannot be trusted for a decision."""


class ForeignArtifacts(RegistryError):
    """The store names artifact files outside its own artifact root: it was copied or moved from another tree."""


def _require_uri(tracking_uri: str) -> str:
    if not tracking_uri:
        raise ValueError("tracking_uri is required (pass Settings.registry_uri)")
    return str(tracking_uri)


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    uri = _require_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _error_code(exc) -> str:
    return str(getattr(exc, "error_code", ""))


def artifact_root(tracking_uri: str) -> Path | None:
    """Artifacts next to a sqlite store (sqlite:///<dir>/x.db -> <dir>/mlartifacts); other stores (a tracking
    server, a file store) keep their own default."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts"
    return None


def _local_path(uri: str) -> Path | None:
    """file:///a/b or /a/b -> Path('/a/b'); None for a remote URI (mlflow-artifacts:, s3:, http:, ...)."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(uri) if not parsed.scheme and uri else None


def _inside(path: Path, root: Path) -> bool:
    path, root = Path(path).resolve(), Path(root).resolve()
    return path == root or root in path.parents


def _foreign_hint(tracking_uri: str, use: str) -> str:
    fresh = "start a fresh registry here (remove its mlruns.db and mlartifacts) and re-run `prodcat run`"
    return (f"the store {tracking_uri} was copied or moved from another work dir. "
            + (f"Pass --model DIR, or {fresh}" if use == "champion" else
               f"To train here, {fresh}; or point MLFLOW_TRACKING_URI at the original store"))


def ensure_experiment(tracking_uri: str, experiment: str = EXPERIMENT) -> str:
    """The experiment's id in this store, created on first use (artifacts under the store's artifact root). An
    existing experiment whose artifacts live in another tree raises ForeignArtifacts: runs logged here would write
    there. -> experiment id."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    root = artifact_root(tracking_uri)
    if found is not None:
        location = _local_path(found.artifact_location or "")
        if root is not None and location is not None and not _inside(location, root):
            raise ForeignArtifacts(f"experiment {experiment!r} stores its artifacts at {location}, outside "
                                   f"{root}: {_foreign_hint(tracking_uri, 'training')}")
        return found.experiment_id
    try:
        return client.create_experiment(experiment, artifact_location=(root / experiment).as_uri() if root else None)
    except MlflowException as e:  # another process created it between the two calls
        if _error_code(e) != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(experiment).experiment_id


def _finite_metrics(row: dict) -> dict:
    out = {}
    for prefix in ("val", "test"):
        out |= {f"{prefix}_{k}": float(v) for k, v in row.get(prefix, {}).items()
                if isinstance(v, (int, float)) and np.isfinite(v)}
    out |= {k: float(row[k]) for k in ("train_seconds", "infer_ms_per_item") if k in row}
    for platform, m in row.get("per_platform", {}).items():
        if m:
            out[f"test_{platform}_hF1"] = float(m["hF1"])
    return out


def _log_params_and_metrics(client, run_id: str, params: dict, row: dict):
    import time

    from mlflow.entities import Metric, Param

    flat = {k: v for k, v in params.items() if not isinstance(v, (list, dict))}
    flat["modalities"] = ",".join(params.get("modalities", []))
    now = int(time.time() * 1000)
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in flat.items()],
                     metrics=[Metric(k, v, now, 0) for k, v in _finite_metrics(row).items()])


def log_metrics_run(name: str, params: dict, row: dict, tracking_uri: str, labels=None, taxonomy=None,
                    model_dir: Path | None = None, experiment: str = EXPERIMENT) -> str:
    """One MLflow run: params, val/test/per-platform metrics, per-level confusion plots (when labels, taxonomy and
    row['test_rows'/'test_paths'] are given) and the model directory's files under `model/`. -> run id."""
    from mlflow.tracking.context.registry import resolve_tags

    from pipelines.classify.train import confusion_plots

    client = _client(tracking_uri)
    run = client.create_run(ensure_experiment(tracking_uri, experiment), run_name=name, tags=resolve_tags())
    run_id, status = run.info.run_id, "FAILED"
    try:
        _log_params_and_metrics(client, run_id, params, row)
        with tempfile.TemporaryDirectory() as tmp:
            if taxonomy is not None and labels is not None and len(row.get("test_rows", [])):
                for png in confusion_plots(name, [labels[i] for i in row["test_rows"]], row["test_paths"],
                                           taxonomy.depth, model_dir or Path(tmp)):
                    client.log_artifact(run_id, str(png), "plots")
        if model_dir is not None:
            client.log_artifacts(run_id, str(model_dir), "model")
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id


def log_run(result, params: dict, tracking_uri: str, taxonomy=None, labels=None, experiment: str = EXPERIMENT) -> str:
    """A trained classifier (pipelines.classify.train.TrainResult) as one run: params, metrics, per-level confusion
    plots and the model files (weights, model.json with its manifest). Sets and returns result.run_id."""
    import json

    row = {"val": result.val, "test": result.test, "per_platform": result.per_platform,
           "train_seconds": result.train_seconds, "infer_ms_per_item": result.infer_ms_per_item,
           "test_rows": result.test_rows, "test_paths": result.test_paths}
    if not len(row["test_rows"]) and (result.model_dir / "test_rows.npy").exists():  # a result read back from disk
        row["test_rows"] = np.load(result.model_dir / "test_rows.npy")
        row["test_paths"] = [tuple(p) for p in json.loads((result.model_dir / "test_predictions.json").read_text())]
    result.run_id = log_metrics_run(result.strategy, params | {"best_epoch": result.best_epoch,
                                                               "epochs": result.epochs},
                                    row, tracking_uri, labels, taxonomy, model_dir=result.model_dir,
                                    experiment=experiment)
    return result.run_id


# ---- the champion ------------------------------------------------------------------------------------------------

def _ensure_registered_model(client):
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(REGISTERED_MODEL)
    except MlflowException as e:
        if _error_code(e) != "RESOURCE_ALREADY_EXISTS":
            raise RegistryError(f"cannot create registered model {REGISTERED_MODEL!r}: {e}") from e


def _champion_version(client):
    """The model version holding the alias, or None when there is really no champion (no registered model, or no
    alias on it). Everything else the registry says is an error, never "no champion"."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(REGISTERED_MODEL)
    except MlflowException as e:
        if _error_code(e) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise RegistryError(f"cannot read registered model {REGISTERED_MODEL!r}: {e}") from e
    version = (model.aliases or {}).get(CHAMPION_ALIAS)
    if version is None:
        return None
    try:
        return client.get_model_version(REGISTERED_MODEL, str(version))
    except MlflowException as e:
        raise RegistryError(f"alias {CHAMPION_ALIAS!r} points at version {version} of {REGISTERED_MODEL!r}, which "
                            f"cannot be read ({e}); repair the registry before registering or serving") from e


def _score(version) -> float:
    try:
        return float(version.tags[SCORE_TAG])
    except (KeyError, ValueError):
        raise RegistryError(f"champion version {version.version} of {REGISTERED_MODEL!r} has no usable {SCORE_TAG} "
                            f"tag ({version.tags.get(SCORE_TAG)!r}): cannot compare a new model with it") from None


def register_champion(run_id: str, val_hf1: float, tracking_uri: str) -> bool:
    """Register the run's model as a new version of `prodcat-classifier`; move alias `champion` to it only if its
    val hF1 beats the current champion's (registry aliases, not stages). The decision and both scores are recorded
    as tags on the new version and on its run (`champion_decision`). -> whether it became champion.
    A champion that cannot be read raises RegistryError (the new version stays registered, unpromoted)."""
    client = _client(tracking_uri)
    _ensure_registered_model(client)
    source = f"{client.get_run(run_id).info.artifact_uri}/model"  # plain files (safetensors + json), not a flavor
    version = client.create_model_version(REGISTERED_MODEL, source, run_id=run_id)
    client.set_model_version_tag(REGISTERED_MODEL, version.version, SCORE_TAG, f"{val_hf1:.6f}")
    current = _champion_version(client)
    best, holder = (-1.0, "none") if current is None else (_score(current), f"version {current.version}")
    promoted = val_hf1 > best
    decision = (f"promoted: val_hF1 {val_hf1:.6f}, no champion yet" if current is None else
                f"{'promoted' if promoted else 'not promoted'}: val_hF1 {val_hf1:.6f} "
                f"{'>' if promoted else '<='} champion {holder} {best:.6f}")
    client.set_model_version_tag(REGISTERED_MODEL, version.version, "champion_decision", decision)
    client.set_tag(run_id, "champion_decision", decision)
    if promoted:
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version.version)
    return promoted


def champion_version(tracking_uri: str):
    """The champion's ModelVersion. Raises NoChampion when nothing holds the alias, RegistryError otherwise."""
    version = _champion_version(_client(tracking_uri))
    if version is None:
        raise NoChampion(f"no `{CHAMPION_ALIAS}` model registered as {REGISTERED_MODEL!r} in {tracking_uri}")
    return version


def _relocated(client, version, path: Path, root: Path) -> Path | None:
    """The champion's files in this store's own tree: a store copied with its work dir recorded them at
    <old location of the experiment>/<run>/artifacts/model; the same place under <root>/<experiment name> (the layout
    ensure_experiment gives) holds the copy's own. None when this tree has no such copy."""
    from mlflow.exceptions import MlflowException

    try:
        experiment = client.get_experiment(client.get_run(version.run_id).info.experiment_id)
    except (MlflowException, TypeError):
        return None
    old = _local_path(experiment.artifact_location or "")
    if old is None or not version.run_id:
        return None
    try:
        candidate = root / experiment.name / path.relative_to(old)
    except ValueError:
        return None
    return candidate if (candidate / "model.json").is_file() and _inside(candidate, root) else None


def champion_source(tracking_uri: str, version) -> tuple[str, Path | None]:
    """(URI to copy the champion's files from, its local directory or None for a remote store). A sqlite store's
    champion must come from under its own artifact root: relocated there when the recorded path is another
    tree's, ForeignArtifacts when this tree holds no copy (never the other tree's files)."""
    client = _client(tracking_uri)
    source = client.get_model_version_download_uri(REGISTERED_MODEL, version.version)
    root, path = artifact_root(tracking_uri), _local_path(source)
    if root is None or path is None:
        return source, None
    if _inside(path, root):
        return source, path
    relocated = _relocated(client, version, path, root)
    if relocated is None:
        raise ForeignArtifacts(f"champion version {version.version} of {REGISTERED_MODEL!r} has its files at "
                               f"{path}, outside this store's artifact root {root}, which holds no copy of them; "
                               f"refusing another tree's model: {_foreign_hint(tracking_uri, 'champion')}")
    return relocated.as_uri(), relocated


def _cache_is_stale(target: Path, local_source: Path | None) -> bool:
    """A cached copy that differs from the registered files it was taken from (e.g. copied in from another tree)."""
    from pipelines.files import sha256_of_files

    return local_source is not None and sha256_of_files(target) != sha256_of_files(local_source)


def champion_dir(tracking_uri: str, cache_dir: str | Path) -> Path:
    """Local copy of the champion's files: <cache_dir>/<model>/v<version>-<run id>/, downloaded once per version
    (a registered version's files never change; the run id keeps a reset registry's new version 1 apart from an
    old one) from under the store's own artifact root (champion_source). The download goes to a temporary sibling
    renamed into place, so a reader never sees half a model and no temporary directory is left behind."""
    import mlflow.artifacts

    version = champion_version(tracking_uri)
    source, local = champion_source(tracking_uri, version)
    target = Path(cache_dir) / REGISTERED_MODEL / f"v{version.version}-{(version.run_id or 'norun')[:12]}"
    if (target / "model.json").exists():
        if not _cache_is_stale(target, local):
            return target
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging),
                                                              tracking_uri=tracking_uri))
        try:
            os.replace(downloaded, target)
        except OSError:  # another process put the same version in place first
            if not (target / "model.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
