"""The CSV files a site names its images and volumes in, read once for every CSV format: text that
is not UTF-8, a NUL byte or an unterminated quote is the file's problem (``DataFileError`` naming
it), not a ``UnicodeDecodeError`` or ``csv.Error`` from deep inside a reader."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from omnirad.data.npz import DataFileError


def csv_table(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The CSV's columns (lower-cased name -> as written) and its records below the header, each
    value a string ('' where a row is short)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise DataFileError(f"{path}:{line}: not UTF-8 text (byte {err.start}); save the CSV as UTF-8") from err
    except OSError as err:
        raise DataFileError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from err
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise DataFileError(f"{path}:{line}: holds a NUL byte: not a text CSV (damaged, or another format)")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = {str(c).strip().lower(): str(c) for c in reader.fieldnames or []}
        records = [{str(k): v if isinstance(v, str) else "" for k, v in record.items()} for record in reader]
    except csv.Error as err:
        raise DataFileError(f"{path}:{reader.line_num}: not a readable CSV ({err})") from err
    return columns, records


def csv_header(path: Path) -> set[str]:
    """The lower-cased column names of a CSV, or none when it cannot be read (format detection)."""
    try:
        return set(csv_table(path)[0])
    except DataFileError:
        return set()
