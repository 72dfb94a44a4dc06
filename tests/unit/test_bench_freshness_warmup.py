"""``make bench-freshness`` measures after a warm-up run when the local broker just started."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

import bench.freshness as freshness


def _fake_report(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "load_seconds": args.seconds,
        "history": args.history,
        "targets": {"accounting": {"latency_seconds": {"p99": args.seconds / 100}}},
    }


def _run(
    monkeypatch: pytest.MonkeyPatch, uptime: float | None, argv: list[str]
) -> tuple[dict[str, Any], list[argparse.Namespace]]:
    measured: list[argparse.Namespace] = []

    def measure(args: argparse.Namespace, _bootstrap: str, _progress: Any) -> dict[str, Any]:
        measured.append(args)
        return _fake_report(args)

    monkeypatch.setattr(freshness, "_measure", measure)
    monkeypatch.setattr(freshness, "check_kafka", lambda _bootstrap: None)
    monkeypatch.setattr(freshness, "broker_uptime_seconds", lambda _bootstrap: uptime)
    return freshness.run(freshness.parse_args(["--json", *argv])), measured


def test_a_broker_just_started_gets_a_warm_up_run_first_not_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report, measured = _run(monkeypatch, 20.0, ["--seconds", "60", "--history", "40"])
    warm, counted = measured
    # the same load until the broker has run 240 s, with no history; then the run asked for
    assert (warm.seconds, warm.history, warm.rate) == (220.0, 0, 10_000.0)
    assert (counted.seconds, counted.history) == (60.0, 40)
    assert report["load_seconds"] == 60.0  # the measured run's figures
    assert report["broker_warmup"] == {
        "broker_uptime_before_seconds": 20.0,
        "load_seconds": 220.0,
        "seconds": pytest.approx(0, abs=1),
        "accounting_p99_seconds_not_counted": 2.2,
    }


def test_a_warm_up_run_has_a_least_load(monkeypatch: pytest.MonkeyPatch) -> None:
    _report, measured = _run(monkeypatch, 230.0, [])
    assert measured[0].seconds == freshness._WARMUP_LOAD_SECONDS


@pytest.mark.parametrize(
    ("uptime", "argv"),
    [
        (240.0, []),  # old enough
        (None, []),  # not this checkout's broker: its age is unknown
        (5.0, ["--broker-warmup-seconds", "0"]),  # asked for none
    ],
)
def test_no_warm_up_run_otherwise(
    monkeypatch: pytest.MonkeyPatch, uptime: float | None, argv: list[str]
) -> None:
    report, measured = _run(monkeypatch, uptime, argv)
    assert len(measured) == 1
    assert report["broker_warmup"] is None
