"""Reading a shop's CSV export so that every row the file really has is accounted for: read, or quarantined.

The csv module counts what it yields, so damage that makes it yield fewer records goes unnoticed. The worst case
is an unclosed quote: `1,"Blue shirt` opens a quoted field that swallows the following lines, up to the next quote
character or the end of the file, into one record that may even have the right number of fields. This reader
follows the physical lines under every record and tells a legitimate multi-line record (a quoted description with
line breaks) from a damaged one by what the swallowed lines look like:

  * a record that spans several lines is damaged when its first continuation line is, on its own, a whole row
    (balanced quotes, the header's width), when its quotes do not pair up, or when it does not parse in strict
    mode (its quote was closed by a quote of a later row): its first line is quarantined ("unclosed quote: ...",
    naming the lines) and the following lines are read again as rows;
  * a record still inside quotes at the end of the file is damaged as well ("... runs to the end of the file"),
    and so is a record the csv module rejects (a field over MAX_FIELD_BYTES: "malformed CSV: ..."); the same
    holds: its first line is quarantined, the lines after it are read again.

A legitimate multi-line text (line breaks inside a properly quoted field) is one record, as before. The limit of
the heuristic: a line of such a text with exactly width - 1 delimiters and balanced quotes reads as a row.

Other rows are quarantined for what is wrong with them: a wrong field count, a NUL byte (named by column),
bytes that are not UTF-8. Reasons start with a kind, then ": ", then the detail.

An export that cannot be read at all raises BadExport naming the file and, where it can tell, why: not a regular
file, UTF-16/UTF-32 (byte-order mark or NUL bytes in the first KB), or a header that lacks the required columns
because the file is ';'- or tab-separated.
"""
from __future__ import annotations

import csv
import stat
from collections import deque
from pathlib import Path

# Largest CSV field we read: 16 MiB. Python's default (128 KiB) rejects long product descriptions; sys.maxsize
# overflows the C long on Windows. A bigger field quarantines its record.
MAX_FIELD_BYTES = 16 * 1024 * 1024
SNIFF_BYTES = 1024
BOMS = ((b"\xff\xfe\x00\x00", "UTF-32 (little-endian byte-order mark)"),
        (b"\x00\x00\xfe\xff", "UTF-32 (big-endian byte-order mark)"),
        (b"\xff\xfe", "UTF-16 (little-endian byte-order mark FF FE)"),
        (b"\xfe\xff", "UTF-16 (big-endian byte-order mark FE FF)"))


class BadExport(ValueError):
    """The export as a whole is unusable (missing or unreadable file, wrong encoding or delimiter, missing columns)."""


class PhysicalLines:
    """The file's lines with their numbers, as an iterator the csv module reads records from. `take()` hands over
    the lines under the record just read; `push_back()` returns lines to be read again."""

    def __init__(self, f, first_number: int = 1):
        self._f = f
        self._next_number = first_number
        self._pending: deque = deque()
        self._taken: list = []
        self._hit_end = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._pending:
            item = self._pending.popleft()
        else:
            try:
                item = (self._next_number, next(self._f))
            except StopIteration:
                self._hit_end = True
                raise
            self._next_number += 1
        self._taken.append(item)
        return item[1]

    def take(self) -> tuple[list, bool]:
        """-> ([(line number, text)] under the last record, whether reading it ran into the end of the file)."""
        taken, hit_end = self._taken, self._hit_end
        self._taken, self._hit_end = [], False
        return taken, hit_end

    def push_back(self, lines: list):
        self._pending.extendleft(reversed(lines))


def check_export_file(path: Path):
    """BadExport unless `path` is an existing regular file (a named pipe would block for ever, a device never end)."""
    if path.parent.exists() and not path.parent.is_dir():
        raise BadExport(f"{path.parent} is a file, not an export folder: give the folder that holds {path.name}")
    if not path.exists():
        raise BadExport(f"export file {path} does not exist")
    if path.is_dir():
        raise BadExport(f"export file {path} is a directory, not a CSV file")
    if not stat.S_ISREG(path.stat().st_mode):
        raise BadExport(f"export file {path} is not a regular file (a named pipe, socket or device): not read")


def sniff_encoding(path: Path, head: bytes):
    """BadExport for a UTF-16/UTF-32 file (by its byte-order mark, or by the NUL bytes between its characters)."""
    for bom, name in BOMS:
        if head.startswith(bom):
            raise BadExport(f"{path} is {name}; prodcat reads UTF-8 CSV: save the export as UTF-8")
    nuls = head.count(b"\x00")
    if nuls >= 4 and nuls >= len(head) // 4:
        raise BadExport(f"{path} holds NUL bytes between its characters ({nuls} in the first "
                        f"{len(head)} bytes): it looks UTF-16 or UTF-32 without a byte-order mark; prodcat reads "
                        "UTF-8 CSV: save the export as UTF-8")


def header_hint(head: bytes) -> str:
    """Why a header may lack the required columns: another delimiter, or another encoding than UTF-8."""
    first = head.split(b"\n")[0]
    counts = {sep: first.count(sep.encode()) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=counts.get)
    hints = []
    if best != "," and counts[best] > counts[","]:
        shown, held = ("tab", f"{counts[best]} tabs") if best == "\t" else (repr(best), f"{counts[best]} {best!r}")
        hints.append(f"the header line holds {held} and {counts[',']} ',': the export looks {shown}-separated; "
                     "prodcat reads comma-separated CSV")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut by the 1 KB window
            hints.append(f"byte {e.start} of the file is not UTF-8 (Latin-1 or Windows-1252?): save it as UTF-8")
    return "; ".join(hints)


def read_header(lines: PhysicalLines, path: Path, required: list[str], head: bytes) -> list[str]:
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(csv.reader(lines))]
    except StopIteration:
        raise BadExport(f"{path} is empty") from None
    except csv.Error as e:
        raise BadExport(f"{path}: unreadable header line: {e}") from None
    lines.take()
    missing = [c for c in required if c not in header]
    if missing:
        found = repr(header)
        found = found if len(found) <= 300 else found[:300] + "...]"
        hint = header_hint(head)
        raise BadExport(f"{path}: missing required columns {missing} (found {found})" + (f"; {hint}" if hint else ""))
    return header


def read_export(path: Path, required: list[str]):
    """Yield (line_number, row_dict_or_None, problem) for every data record of a CSV export; line_number is the
    record's first physical line (the header is line 1). A record with a problem is yielded with the problem text
    (the quarantine reason) instead of a row, never dropped, so that rows in = rows out + rows quarantined."""
    path = Path(path)
    check_export_file(path)
    try:
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise BadExport(f"cannot read export file {path}: {e.strerror or e}") from None
    sniff_encoding(path, head)
    if csv.field_size_limit() < MAX_FIELD_BYTES:  # process-wide setting: raised here, when reading, never lowered
        csv.field_size_limit(MAX_FIELD_BYTES)
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        lines = PhysicalLines(f)
        header = read_header(lines, path, required, head)
        yield from records(lines, header)


def records(lines: PhysicalLines, header: list[str]):
    """The data records after the header, as read_export yields them."""
    width = len(header)
    reader = csv.reader(lines)
    while True:
        error = None
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            fields, error = None, e
        taken, hit_end = lines.take()
        if not taken:
            return
        damage, reread = record_damage(taken, hit_end, width, error)
        if damage:
            yield taken[0][0], None, damage
            if reread:
                lines.push_back(taken[1:])
            reader = csv.reader(lines)  # a fresh parser state after damage
            continue
        problem = field_problem(fields, header)
        if problem != "blank line":
            yield taken[0][0], None if problem else dict(zip(header, fields)), problem


def row_like(text: str, width: int) -> bool:
    """Is this physical line, on its own, a whole row: balanced quotes, a strict parse that ends outside quotes,
    exactly the header's width? (Inside a legitimate quoted field a line holds quotes only doubled, its last line
    holds the closing quote, so only a text line with exactly width - 1 delimiters could pass for a row.)"""
    if text.count('"') % 2:
        return False
    try:
        parsed = list(csv.reader([text], strict=True))
    except csv.Error:
        return False
    return len(parsed) == 1 and len(parsed[0]) == width


def well_formed(taken: list) -> bool:
    """Do these lines pair their quotes and parse in strict mode? A legitimate multi-line field is opened and
    closed by a quote (escaped quotes come doubled), and its closing quote is followed by a delimiter or the line
    end; a field closed by the quote of a later row, or by a stray quote inside one (`5"6`), is not."""
    if sum(text.count('"') for _, text in taken) % 2:
        return False
    try:
        list(csv.reader((text for _, text in taken), strict=True))
        return True
    except csv.Error:
        return False


def _lines(taken: list) -> str:
    first, last = taken[0][0], taken[-1][0]
    return f"line {first}" if first == last else f"lines {first}-{last}"


def record_damage(taken: list, hit_end: bool, width: int, error) -> tuple[str | None, bool]:
    """Is the record read from these physical lines damaged? -> (quarantine reason or None, whether its
    continuation lines are to be read again as rows of their own; its first line is then the one quarantined)."""
    first, rest = taken[0][0], taken[1:]
    if error is None and not hit_end and (not rest or (not row_like(rest[0][1], width) and well_formed(taken))):
        return None, False  # one line, or a legitimate multi-line record (its field count is checked later)
    reread = bool(rest)  # nothing stays hidden inside a damaged record: each line after its first is read again
    if error is not None:
        why = f"malformed CSV: {error} ({_lines(taken)}{', an unclosed quote?' if rest else ''})"
    elif hit_end:
        why = f"unclosed quote: the quoted field opened on line {first} runs to the end of the file ({_lines(taken)})"
    elif row_like(rest[0][1], width):
        why = f"unclosed quote: the record from line {first} runs on over {_lines(rest)}, which read as rows"
    else:
        why = f"unclosed quote: the quoted field opened on line {first} is closed by a quote on line {rest[-1][0]}"
    if reread:
        why += f"; line {first} quarantined, {_lines(rest)} read again as rows"
    return why, reread


def field_problem(fields: list, header: list[str]) -> str | None:
    """Why a parsed record cannot be a row ('blank line': not a record at all), or None."""
    if not fields:
        return "blank line"
    if all(not x.strip() for x in fields):
        return "empty row"  # a row of empty separators is a record too
    if len(fields) != len(header):
        return f"malformed row: {len(fields)} fields, expected {len(header)}"
    for column, value in zip(header, fields):
        if "\x00" in value:
            return f"NUL byte in field {column}"
    if any(_has_surrogates(x) for x in fields):
        return "non-UTF-8 bytes in row"
    return None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True
