"""What the probe trusts of its collector: the key the token anchors or the first
enrollment names, the endpoint lists that verify against it (and only those), never
an older list over a newer one, and a list changed on disk dropped."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from probe_agent.protocol.endpoints import EndpointsError
from probe_agent.state import reach
from probe_agent.state.identity import STATE_FILE
from tests.support.collector_keys import CollectorKey


def urls(state: Path) -> list[str]:
    kept = reach.load_reach(state).endpoints
    return [e.url for e in kept.endpoints] if kept else []


def test_a_token_splits_into_the_token_and_its_anchor() -> None:
    prefix = "ab" * 16
    assert reach.split_token(f" bwt_secret-_x.{prefix.upper()} ") == ("bwt_secret-_x", prefix)
    assert reach.split_token("bwt_plain") == ("bwt_plain", None)
    for bad in ("bwt_x.", "bwt_x.abc", "bwt_x." + "g" * 32):
        with pytest.raises(ValueError, match="fingerprint"):
            reach.split_token(bad)


def test_the_enrollments_key_is_pinned_and_a_later_other_key_refused(tmp_path: Path) -> None:
    key, other = CollectorKey(), CollectorKey()
    assert reach.pin(tmp_path, None) is None  # a collector older than the field
    assert reach.pin(tmp_path, key.key_id.upper()) == key.key_id
    assert reach.pin(tmp_path, key.key_id) == key.key_id
    with pytest.raises(reach.CollectorKeyMismatch):
        reach.pin(tmp_path, other.key_id)
    with pytest.raises(reach.CollectorKeyMismatch):
        reach.anchor(tmp_path, other.key_id[:32])


def test_an_anchor_refuses_an_enrollment_answered_with_another_key(tmp_path: Path) -> None:
    key, other = CollectorKey(), CollectorKey()
    reach.anchor(tmp_path, key.key_id[:32])
    with pytest.raises(reach.CollectorKeyMismatch, match="token names"):
        reach.pin(tmp_path, other.key_id)
    assert reach.load_reach(tmp_path).key_id is None
    assert reach.pin(tmp_path, key.key_id) == key.key_id


def test_only_lists_signed_by_the_pinned_key_are_kept(tmp_path: Path) -> None:
    key, other = CollectorKey(), CollectorKey()
    reach.pin(tmp_path, key.key_id)
    reach.keep_endpoints(tmp_path, key.listing("https://bw.example", "https://alt.example"))
    assert urls(tmp_path) == ["https://bw.example", "https://alt.example"]
    with pytest.raises(EndpointsError, match="another key"):
        reach.keep_endpoints(tmp_path, other.listing("https://evil.example"))
    forged = key.listing("https://bw.example")
    document = base64.b64decode(forged["document"]).replace(b"bw.example", b"ev.example")
    forged["document"] = base64.b64encode(document).decode()
    with pytest.raises(EndpointsError, match="signature"):
        reach.keep_endpoints(tmp_path, forged)
    assert urls(tmp_path) == ["https://bw.example", "https://alt.example"]  # kept as it was


def test_an_older_list_never_replaces_a_newer_one(tmp_path: Path) -> None:
    key = CollectorKey()
    reach.pin(tmp_path, key.key_id)
    reach.keep_endpoints(
        tmp_path, key.listing("https://new.example", issued="2026-12-03T08:00:00Z")
    )
    kept = reach.keep_endpoints(
        tmp_path, key.listing("https://old.example", issued="2026-12-03T07:00:00Z")
    )
    assert kept is not None and urls(tmp_path) == ["https://new.example"]
    reach.keep_endpoints(
        tmp_path, key.listing("https://newer.example", issued="2026-12-04T08:00:00Z")
    )
    assert urls(tmp_path) == ["https://newer.example"]


def test_a_probe_enrolled_before_collectors_named_their_key_pins_the_first_lists(
    tmp_path: Path,
) -> None:
    key, other = CollectorKey(), CollectorKey()
    reach.keep_endpoints(tmp_path, key.listing("https://bw.example"))
    assert reach.load_reach(tmp_path).key_id == key.key_id  # trust on first use
    with pytest.raises(EndpointsError):
        reach.keep_endpoints(tmp_path, other.listing("https://evil.example"))
    anchored = tmp_path / "anchored"
    reach.anchor(anchored, key.key_id[:32])
    with pytest.raises(EndpointsError, match="token names"):
        reach.keep_endpoints(anchored, other.listing("https://evil.example"))


def test_a_list_changed_on_disk_is_dropped(tmp_path: Path) -> None:
    key = CollectorKey()
    reach.pin(tmp_path, key.key_id)
    reach.keep_endpoints(tmp_path, key.listing("https://bw.example"))
    path = tmp_path / STATE_FILE
    state = json.loads(path.read_text())
    listing = state[reach.ENDPOINTS]
    document = base64.b64decode(listing["document"]).replace(b"bw.example", b"ev.example")
    listing["document"] = base64.b64encode(document).decode()
    path.write_text(json.dumps(state))
    assert reach.load_reach(tmp_path).endpoints is None


def test_attempts_are_counted_and_the_last_answer_remembered(tmp_path: Path) -> None:
    reach.record_attempts(tmp_path, [("a", False, "timed out"), ("b", True, None)], "b")
    reach.record_attempts(tmp_path, [("b", True, None)], "b")
    kept = reach.load_reach(tmp_path)
    assert (kept.tactics["a"].failed, kept.tactics["a"].last_failure) == (1, "timed out")
    assert (kept.tactics["b"].ok, kept.tactics["b"].failed, kept.last_tactic) == (2, 0, "b")
