"""Writing outputs safely and reading small files with errors that name them. Used by every stage that writes.

Atomic: every writer here writes a temporary file in the target's own directory (same file system, so the rename is
atomic), flushes and fsyncs it, then `os.replace`s it over the target and fsyncs the directory. A reader, or a run
killed half-way, sees the old file or the complete new one, never a truncated file that happens to parse. A killed
run may leave its temporary file behind (`.<name>.<random>.tmp`, hidden, never read by prodcat).

Never over an input: `check_output_path` refuses an output that is, or lies inside, one of the run's inputs (a
`classify --out` equal to the export would replace the raw export with predictions), and turns the other ways an
output path can fail (a directory where a file is expected, an unwritable or missing-and-uncreatable parent, a name
longer than the file system allows) into one clear `OutputPathError` before any work is done.

CSV for people: `atomic_write_csv` neutralises spreadsheet formula injection (OWASP "CSV injection"): a text cell
that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is written with a leading apostrophe (`'=1+1`), so
Excel, LibreOffice and Google Sheets show it as text instead of evaluating it. Only text cells change (numbers,
including negative ones, are written as numbers); a program reading the CSV back sees the apostrophe. Parquet
outputs are written verbatim: they are for programs, not spreadsheets.
"""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
DEFAULT_NAME_MAX = 255  # bytes per path component on ext4, xfs, btrfs, APFS, NTFS (in UTF-16 units)
DEFAULT_PATH_MAX = 4096


class OutputPathError(ValueError):
    """An output path that cannot or must not be written (the message says which and why)."""


class BadJSONFile(ValueError):
    """A JSON file that does not parse; the message names the file, line and column."""


def _fsync_dir(directory: Path):
    """Make the rename itself durable. Some file systems cannot open or fsync a directory: nothing to do there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path):
    """Yields a temporary path beside `path` for a writer to create; when the block ends without an exception the
    file is fsynced and renamed over `path`; on an exception it is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name[:100]}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
    return Path(path)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_parquet(data, path, schema=None) -> Path:
    """A pyarrow Table, or a DataFrame converted with `schema` (so an empty frame keeps its column types)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, schema=schema, preserve_index=False)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def neutralise_formula(value):
    """'=HYPERLINK(...)' -> "'=HYPERLINK(...)"; any other value (numbers, None, text starting otherwise) as is."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_safe_frame(df):
    """A copy of `df` whose text cells cannot be evaluated as formulas by a spreadsheet (see the module doc)."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype) in ("string", "str"):
            out[column] = out[column].map(neutralise_formula)
    return out


def atomic_write_csv(df, path) -> Path:
    """The frame as UTF-8 CSV without the index, formula-neutralised, written atomically. Lines end in CRLF
    (RFC 4180): with pandas' default "\n" a carriage return inside a text cell is written unquoted, and readers
    that break lines at "\r" (spreadsheets, csv.reader) then split the row in two."""
    safe = csv_safe_frame(df)
    with atomic_output(path) as tmp:
        safe.to_csv(tmp, index=False, lineterminator="\r\n")
    return Path(path)


def _name_limits(existing: Path) -> tuple[int, int]:
    try:
        return os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return DEFAULT_NAME_MAX, DEFAULT_PATH_MAX


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _is_same_or_inside(out: Path, source: Path) -> bool:
    out_r, src_r = out.resolve(), source.resolve()
    if out_r == src_r or src_r in out_r.parents:
        return True
    try:  # a hard link to the input is the input too
        return out.exists() and source.exists() and os.path.samefile(out, source)
    except OSError:
        return False


def check_output_path(out, inputs=(), *, directory: bool = False) -> Path:
    """`out` if a run may write it (a file, or a directory of outputs when `directory`), else OutputPathError.

    Refused: `out` equal to or inside any of `inputs` (export files or folders; None entries are skipped); an
    existing directory where a file is expected (or a file where a directory is); a path component or whole path
    longer than the file system allows; a parent that is a file or that this process cannot write in."""
    out = Path(out).absolute()
    anchor = _nearest_existing(out.parent)
    name_max, path_max = _name_limits(anchor if anchor.is_dir() else anchor.parent)
    too_long = [p for p in out.parts if len(os.fsencode(p)) > name_max]
    if too_long:
        raise OutputPathError(f"output name too long ({len(os.fsencode(too_long[0]))} bytes, the file system allows "
                              f"{name_max}): {too_long[0][:60]}...")
    if len(os.fsencode(str(out))) >= path_max:
        raise OutputPathError(f"output path too long ({len(os.fsencode(str(out)))} bytes, at most {path_max - 1})")
    for source in (Path(s) for s in inputs if s is not None):
        if _is_same_or_inside(out, source):
            raise OutputPathError(f"output {out} is or lies inside the input {source}: it would overwrite or alter "
                                  "the export; choose an output outside it")
    if out.is_dir() and not directory:
        raise OutputPathError(f"output {out} is an existing directory; give a file name (e.g. {out}/predictions.csv)")
    if out.exists() and directory and not out.is_dir():
        raise OutputPathError(f"output {out} is an existing file; give a directory for the outputs")
    if not anchor.is_dir():
        raise OutputPathError(f"cannot create {out}: {anchor} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=anchor):
            pass
    except OSError as e:
        raise OutputPathError(f"cannot write in {anchor} (for {out}): {e.strerror or e}") from None
    return out


def read_json(path):
    """The parsed JSON of a UTF-8 file; a file that does not parse -> BadJSONFile naming it, its line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BadJSONFile(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadJSONFile(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def sha256_of_files(path) -> str:
    """sha256 over a file, or over every file of a directory (relative names included, sorted): the identity of
    model weights, a lexical space or a registered model's files."""
    import hashlib

    path = Path(path)
    files = sorted(f for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
