"""OONI files in: read, judged by our rules, reported (docs/methodology.md, "OONI measurements").

``read_files`` streams OONI measurements out of files as OONI publishes them:
one JSON object (``.json``), a JSON array, or one object a line (``.jsonl``),
each possibly gzip-compressed (recognized by its magic bytes, not its name).
Every measurement keeps its exact bytes (its provenance is OONI's public
archive: ``report_id`` and ``measurement_uid``). A line that is not a readable
web_connectivity measurement is reported with its file and line number and
skipped: the others are read all the same.

``judge`` gives the verdict of one (``collector.analysis.ooni`` maps it, the
rules are Blockwatch's), and ``report_line`` the JSON line of ``ooni import
--format jsonl`` (DESIGN, "OONI and exports").
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from collector.analysis import Context, Verdict, analyze
from collector.analysis.ooni import OONIFormatError, OONIMeasurement, parse

GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE = 16 * 1024 * 1024  # one measurement; OONI's largest are a few MB (bodies)


@dataclass(frozen=True, slots=True)
class Item:
    """One measurement read: where from, its exact bytes, and it parsed (or why not)."""

    file: str
    line: int  # 1-based; the element's index + 1 in a JSON array
    raw: bytes
    measurement: OONIMeasurement | None
    error: str | None = None


def _open(path: Path) -> IO[bytes]:
    handle: IO[bytes] = path.open("rb")
    if handle.read(2) == GZIP_MAGIC:
        handle.close()
        return cast(IO[bytes], gzip.open(path, "rb"))
    handle.seek(0)
    return handle


def _item(name: str, line: int, raw: bytes) -> Item:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return Item(name, line, raw, None, f"not JSON: {exc}")
    try:
        return Item(name, line, raw, parse(document))
    except OONIFormatError as exc:
        return Item(name, line, raw, None, str(exc))


def read_file(path: Path) -> Iterator[Item]:
    """The measurements of one file, streamed: JSON lines a line at a time; a JSON
    array, or one object pretty-printed over several lines, read whole."""
    name = str(path)
    try:
        handle = _open(path)
    except OSError as exc:
        yield Item(name, 0, b"", None, f"cannot read: {exc.strerror or exc}")
        return
    with handle:
        try:
            first = handle.readline(MAX_LINE)
            while first and not first.strip():
                first = handle.readline(MAX_LINE)
            if first.lstrip().startswith(b"["):
                yield from _array(name, first + handle.read())
            elif first.strip() and not _complete(first):  # one object over many lines
                yield _item(name, 1, (first + handle.read()).strip())
            else:
                number, line = 1, first
                while line:
                    if line.strip():
                        yield _item(name, number, line.strip())
                    number, line = number + 1, handle.readline(MAX_LINE)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            yield Item(name, 0, b"", None, f"cannot read: {exc}")


def _complete(line: bytes) -> bool:
    try:
        json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _array(name: str, body: bytes) -> Iterator[Item]:
    try:
        documents = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        yield Item(name, 1, body, None, f"not JSON: {exc}")
        return
    for index, document in enumerate(documents, start=1):
        raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            yield Item(name, index, raw, parse(document))
        except OONIFormatError as exc:
            yield Item(name, index, raw, None, str(exc))


def read_files(paths: Iterable[Path]) -> Iterator[Item]:
    for path in paths:
        yield from read_file(path)


def read_stream(name: str, stream: IO[bytes]) -> Iterator[Item]:
    """Standard input (``-``): JSON lines, possibly gzip-compressed."""
    head = stream.read(2)
    source: IO[bytes] = io.BytesIO(head + stream.read())
    if head == GZIP_MAGIC:
        source = cast(IO[bytes], gzip.GzipFile(fileobj=cast(BinaryIO, source)))
    for number, line in enumerate(source, start=1):
        if line.strip():
            yield _item(name, number, line.strip())


def judge(measurement: OONIMeasurement, lab_networks: tuple[Any, ...] = ()) -> Verdict:
    """Our verdict on one OONI measurement: the rules, its own control, its ASNs."""
    ctx = Context(asn_of=measurement.asns.get, lab_networks=lab_networks)
    controls = [measurement.control] if measurement.control is not None else []
    return analyze(measurement.record, controls, ctx)


def report_line(item: Item, verdict: Verdict | None, stored: bool, target: bool) -> dict[str, Any]:
    """One line of ``ooni import --format jsonl``: our verdict beside OONI's."""
    m = item.measurement
    if m is None:
        return {"file": item.file, "line": item.line, "stored": False, "error": item.error}
    return {
        "input": m.input,
        "domain": m.domain,
        "probe_cc": m.probe_cc,
        "probe_asn": m.probe_asn,
        "measurement_start_time": m.started_at.strftime("%Y-%m-%d %H:%M:%S"),
        "report_id": m.report_id,
        "measurement_uid": m.measurement_uid,
        "target": target,
        "stored": stored,
        "verdict": (
            {"flags": sorted(str(f) for f in verdict.flags), "reasons": list(verdict.reasons)}
            if verdict is not None
            else None
        ),
        "ooni": {"blocking": m.blocking, "accessible": m.accessible},
    }
