"""Machine-readable output of listing commands (``--format json|csv``): flat records as text."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from robustgen_bench.errors import UserInputError

#: ``--format`` values of the listing commands (``zoo list``, ``status``); ``table`` is for people.
LIST_FORMATS = ("table", "json", "csv")


def check_list_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`LIST_FORMATS`; otherwise a :class:`UserInputError` (exit 2)."""
    if fmt not in LIST_FORMATS:
        raise UserInputError(f"unknown format {fmt!r}; expected one of {', '.join(LIST_FORMATS)}",
                             key="--format")
    return fmt


def records_json(payload: Any) -> str:
    """``payload`` (records, or a mapping holding them) as indented JSON with a final newline."""
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def records_csv(records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """One CSV line per record with a header of ``columns`` (missing values empty, None empty)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


__all__ = ["LIST_FORMATS", "check_list_format", "records_csv", "records_json"]
