"""Decoys set aside: kept for a week after a measurement showed them blocked, never
drawn meanwhile unless the whole pool is set aside."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from probe_agent.measure.decoys import SET_ASIDE
from probe_agent.state import decoys

NOW = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
POOL = ("a.example", "b.example", "c.example")


def test_a_blocked_decoy_is_not_drawn_until_its_week_is_over(tmp_path: Path) -> None:
    decoys.record_blocked(tmp_path, {"a.example", "b.example"}, NOW)
    assert {decoys.draw(POOL, tmp_path, NOW) for _ in range(50)} == {"c.example"}
    later = NOW + timedelta(seconds=SET_ASIDE + 1)
    assert decoys.set_aside(tmp_path, later) == {}
    assert {decoys.draw(POOL, tmp_path, later) for _ in range(200)} == set(POOL)


def test_a_pool_wholly_set_aside_is_used_whole(tmp_path: Path) -> None:
    decoys.record_blocked(tmp_path, set(POOL), NOW)
    assert decoys.draw(POOL, tmp_path, NOW) in POOL


def test_each_round_draws_anew(tmp_path: Path) -> None:
    assert len({decoys.draw(POOL, tmp_path, NOW) for _ in range(200)}) == 3
