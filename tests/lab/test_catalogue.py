"""The scenario catalogue covers every technique the lab's censor implements (offline).

Each scenario's setup is applied to a recording stand-in for the lab, and the
policies it hands the censors are collected: every censoring field of
``Policy`` must be switched on by at least one scenario, so that removing a
scenario (or adding a technique without one) shows here rather than as a
technique that no test ever runs.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from tests.lab import topology as topo
from tests.lab.censor import Policy
from tests.lab.scenarios import CATALOGUE, baseline_policies

# Fields that place the censor rather than censor anything.
NOT_TECHNIQUES = {"inside", "delay_ms"}


class _Recorder:
    def __init__(self) -> None:
        self.policies: list[Policy] = []

    def set_policy(self, policy: Policy) -> None:
        self.policies.append(policy)

    def request(self, **_: Any) -> None:
        return None


class _StandInLab:
    def __init__(self) -> None:
        self.national = _Recorder()
        self.regional = _Recorder()
        self.web = _Recorder()
        self.dns = _Recorder()
        self.isp = {net.name: _Recorder() for net in topo.NETWORKS}

    def ip_of(self, domain: str) -> str:
        return "198.18.1.1"


def _techniques(policy: Policy, baseline: Policy) -> set[str]:
    return {
        f.name
        for f in fields(Policy)
        if f.name not in NOT_TECHNIQUES and getattr(policy, f.name) != getattr(baseline, f.name)
    }


def test_every_censor_technique_has_a_scenario() -> None:
    national, regional = baseline_policies()
    used: set[str] = set()
    for scenario in CATALOGUE:
        lab = _StandInLab()
        scenario.setup(lab)
        for policy in lab.national.policies:
            used |= _techniques(policy, national)
        for policy in lab.regional.policies:
            used |= _techniques(policy, regional)
    techniques = {f.name for f in fields(Policy)} - NOT_TECHNIQUES
    assert techniques - used == set()


def test_scenario_names_are_unique() -> None:
    """Names are the test ids and the lab report's keys: a duplicate hides a result."""
    names = [s.name for s in CATALOGUE]
    assert sorted(names) == sorted(set(names))
