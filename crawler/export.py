"""Export a job's records as JSON lines or CSV, streaming: constant memory whatever the size."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterable
from typing import IO, Any, Literal

import orjson

from crawler.records import CSV_FIELDS, CSV_JSON_FIELDS

Format = Literal["jsonl", "csv"]


def format_for_path(path: str | None, explicit: str | None) -> Format:
    """--format wins; else the output file's extension; else JSON lines."""
    if explicit in ("jsonl", "csv"):
        return explicit  # type: ignore[return-value]
    if path and path.lower().endswith(".csv"):
        return "csv"
    return "jsonl"


async def export(records: AsyncIterable[dict[str, Any]], out: IO[bytes], fmt: Format) -> int:
    """Write every record to the binary stream `out`; returns how many were written."""
    n = 0
    if fmt == "jsonl":
        async for rec in records:
            out.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
            n += 1
        return n
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    try:
        writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        async for rec in records:
            for name in CSV_JSON_FIELDS:
                if rec.get(name) is not None:
                    rec[name] = orjson.dumps(rec[name]).decode()
            writer.writerow(rec)
            n += 1
        text.flush()
    finally:
        text.detach()  # leave `out` open: the caller owns it
    return n
