"""CSV files as people save them from a spreadsheet: the text encoding, the column separator and the decimal sign.

A spreadsheet saves "CSV" in the conventions of its locale: UTF-8 (with or without a byte-order mark),
Windows-1252 ("CSV" in older Excel), or UTF-16 with a byte-order mark ("Unicode text", tab-separated); columns
separated by commas, or by semicolons where the locale writes decimal commas (``2,5``). The files LuDosimetry reads
from a user (blood samples, a cohort manifest) go through here, so that each of these is read as meant, and a
row that does not fit its header is refused instead of being read short.
"""
from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from typing import List, Optional

#: The separators told apart, in the order preferred on a tie.
SEPARATORS = (",", ";", "\t")


@dataclass(frozen=True)
class CsvRows:
    """The non-blank rows of a CSV file (header first) and how it was written."""

    rows: List[List[str]]
    separator: str
    encoding: str

    @property
    def decimal_comma(self) -> bool:
        """Whether a comma inside a number is its decimal sign (the columns are not comma-separated)."""
        return self.separator != ","

    def number_text(self, text: str) -> str:
        """``text`` with its decimal comma as a point (``2,5`` → ``2.5``) where :attr:`decimal_comma`; other
        text unchanged."""
        if self.decimal_comma and re.fullmatch(r"\s*[+-]?\d*,\d+(?:[eE][+-]?\d+)?\s*", text):
            return text.replace(",", ".")
        return text

    def overlong(self, row: List[str]) -> bool:
        """Whether ``row`` has values beyond the header's columns (a decimal comma in a comma-separated file, or
        a value holding the separator); empty trailing cells do not count."""
        return any(cell.strip() for cell in row[len(self.rows[0]):]) if self.rows else False


def decoded_text(data: bytes) -> Optional[tuple]:
    """``(text, encoding)`` of a file's bytes: UTF-16 when they start with its byte-order mark, else UTF-8 (a
    byte-order mark dropped), else Windows-1252; None when none of them decodes them."""
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        candidates = ("utf-16",)
    else:
        candidates = ("utf-8-sig", "cp1252")
    for encoding in candidates:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            pass
    return None


def separator_of(header: str) -> str:
    """The column separator of a header line: of :data:`SEPARATORS`, the one it holds most (a comma when it
    holds none)."""
    counts = [header.count(s) for s in SEPARATORS]
    best = max(range(len(SEPARATORS)), key=lambda i: counts[i])
    return SEPARATORS[best] if counts[best] > 0 else ","


def csv_rows(data: bytes, comment: Optional[str] = None) -> Optional[CsvRows]:
    """The rows of a CSV file's bytes (:class:`CsvRows`); blank rows, and rows whose first cell starts with
    ``comment`` when given, left out. None when the text cannot be decoded (:func:`decoded_text`).

    Raises
    ------
    csv.Error
        Text the csv module cannot split (e.g. a NUL character).
    """
    decoded = decoded_text(data)
    if decoded is None:
        return None
    text, encoding = decoded
    header = next((line for line in text.splitlines() if line.strip()
                   and not (comment and line.lstrip().startswith(comment))), "")
    separator = separator_of(header)
    rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=separator)
            if any(c.strip() for c in r) and not (comment and r[0].lstrip().startswith(comment))]
    return CsvRows(rows=rows, separator=separator, encoding=encoding)
