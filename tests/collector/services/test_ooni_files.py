"""OONI files as OONI publishes them: JSON, JSON arrays, JSON lines, gzip; bad lines skipped."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

from collector.services.ooni import judge, read_file, read_files, read_stream, report_line

CORPUS = Path(__file__).resolve().parents[2] / "data" / "ooni"
ONE = CORPUS / "v05_tls_reset_mastodon_social.json"


def test_every_published_shape_reads_the_same_measurements(tmp_path: Path) -> None:
    lines = (CORPUS / "mixed.jsonl").read_bytes().splitlines()
    documents = [json.loads(line) for line in lines]
    array = tmp_path / "array.json"
    array.write_text(json.dumps(documents, indent=2))
    gz = tmp_path / "renamed.txt"  # gzip is recognized by its bytes, not its name
    gz.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    shapes = {
        "jsonl": list(read_file(CORPUS / "mixed.jsonl")),
        "jsonl.gz": list(read_file(CORPUS / "mixed.jsonl.gz")),
        "array": list(read_file(array)),
        "gzip named otherwise": list(read_file(gz)),
        "stdin": list(read_stream("-", io.BytesIO(b"\n".join(lines)))),
        "stdin gzip": list(read_stream("-", io.BytesIO(gzip.compress(b"\n".join(lines))))),
    }
    for shape, items in shapes.items():
        assert [i.error for i in items] == [None] * len(lines), shape
        assert [i.measurement.report_id for i in items if i.measurement] == [
            d["report_id"] for d in documents
        ], shape
    # JSON lines keep each measurement's exact bytes: its provenance.
    assert [i.raw for i in shapes["jsonl"]] == [line.strip() for line in lines]
    assert [i.line for i in shapes["jsonl"]] == list(range(1, len(lines) + 1))


def test_a_pretty_printed_measurement_is_one_item() -> None:
    [item] = read_file(ONE)
    assert item.error is None and item.measurement is not None
    assert json.loads(item.raw) == json.loads(ONE.read_text())
    assert judge(item.measurement).blocked


def test_bad_lines_are_reported_with_their_place_and_the_rest_is_read(tmp_path: Path) -> None:
    good = (CORPUS / "all_v04.jsonl").read_bytes().splitlines()
    other_test = json.dumps({**json.loads(good[0]), "test_name": "telegram"}).encode()
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([good[0], b"{not json", other_test, b"", good[1]]) + b"\n")
    items = list(read_file(path))
    assert [(i.line, i.measurement is not None) for i in items] == [
        (1, True), (2, False), (3, False), (5, True),
    ]  # fmt: skip
    assert items[1].error is not None and items[1].error.startswith("not JSON")
    assert items[2].error is not None and "test_name" in items[2].error
    line = report_line(items[1], None, stored=False, target=False)
    assert line == {"file": str(path), "line": 2, "stored": False, "error": items[1].error}


def test_missing_and_truncated_files_are_errors_not_crashes(tmp_path: Path) -> None:
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress((CORPUS / "mixed.jsonl").read_bytes())[:300])
    items = list(read_files([tmp_path / "absent.jsonl", truncated]))
    assert items[0].error is not None and items[0].error.startswith("cannot read")
    assert items[-1].error is not None and items[-1].measurement is None


def test_the_report_line_has_our_verdict_beside_oonis() -> None:
    [item] = read_file(ONE)
    assert item.measurement is not None
    line = report_line(item, judge(item.measurement), stored=False, target=True)
    assert line["verdict"] == {"flags": ["tls"], "reasons": ["tls.handshake_cut",
                                                              "trap.aaaa_no_answer"]}  # fmt: skip
    assert line["ooni"] == {"blocking": "http-failure", "accessible": False}
    assert (line["domain"], line["probe_cc"], line["probe_asn"]) == ("mastodon.social", "CN", 4134)
    assert line["measurement_start_time"] == "2026-06-10 12:00:07"
    assert "probe_ip" not in json.dumps(line)
