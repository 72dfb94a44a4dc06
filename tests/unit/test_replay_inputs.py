"""What ``queuestream replay`` accepts (durations, offsets files, exactly one destination),
and the plan's arithmetic, none of which needs a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consumers.replay_inputs import ReplaySpec, parse_duration, read_offsets_file
from consumers.replay_plan import OffsetMove, ReplayPlan
from queuestream.errors import ConfigurationError
from queuestream.kafka_offsets import LogBounds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT2H30M", timedelta(hours=2, minutes=30)),
        ("P1DT1S", timedelta(days=1, seconds=1)),
        ("pt15m", timedelta(minutes=15)),
        ("2h30m", timedelta(hours=2, minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("1d 12h", timedelta(days=1, hours=12)),
        ("0.5h", timedelta(minutes=30)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "P", "2 hours", "h2", "2h30", "PT"])
def test_bad_durations_say_what_to_use(text: str) -> None:
    with pytest.raises(ConfigurationError, match="PT2H30M"):
        parse_duration(text)


def test_offsets_file(tmp_path: Path) -> None:
    file = tmp_path / "offsets.csv"
    file.write_text("# exported\nexigo.orders,0,15\n\n exigo.orders , 1 , 7\n")
    assert read_offsets_file(file) == {("exigo.orders", 0): 15, ("exigo.orders", 1): 7}


def test_offsets_file_errors_name_the_line(tmp_path: Path) -> None:
    file = tmp_path / "offsets.csv"
    file.write_text("exigo.orders,0,15\nexigo.orders,one,7\n")
    with pytest.raises(ConfigurationError, match="line 2"):
        read_offsets_file(file)
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_offsets_file(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("# nothing\n")
    with pytest.raises(ConfigurationError, match="no offsets"):
        read_offsets_file(tmp_path / "empty.csv")


def test_exactly_one_destination() -> None:
    with pytest.raises(ConfigurationError, match="one of"):
        ReplaySpec()
    with pytest.raises(ConfigurationError, match="one of"):
        ReplaySpec(to_earliest=True, by_duration=timedelta(hours=1))
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert ReplaySpec(by_duration=timedelta(hours=2)).moment(now) == datetime(
        2026, 11, 29, 10, tzinfo=UTC
    )
    assert ReplaySpec(to_earliest=True).moment(now) is None


def test_offsets_are_clamped_into_the_retained_log() -> None:
    bounds = LogBounds(low=5, high=20)
    assert [bounds.clamp(o) for o in (0, 5, 12, 20, 99)] == [5, 5, 12, 20, 20]


def test_a_move_counts_from_the_target_offset_when_there_is_one() -> None:
    move = OffsetMove(
        "exigo.orders", 0, group_offset=10, target_offset=7, new_offset=12, low=0, high=20
    )
    assert (move.current, move.delta) == (7, 5)
    untargeted = OffsetMove("exigo.orders", 0, 10, None, new_offset=4, low=0, high=20)
    assert (untargeted.current, untargeted.delta) == (10, -6)
    never = OffsetMove("exigo.orders", 0, None, None, new_offset=0, low=0, high=20)
    assert (never.current, never.delta) == (None, None)


def test_the_plan_as_json_sums_the_skipped_events() -> None:
    moves = [
        OffsetMove("exigo.orders", 0, 3, None, new_offset=9, low=0, high=9),
        OffsetMove("exigo.orders", 1, None, None, new_offset=0, low=0, high=5),
    ]
    plan = ReplayPlan(
        group="g",
        destination="to the earliest offsets",
        state="Empty",
        members=[],
        moves=moves,
        skipped={("exigo.orders", 0): 4, ("exigo.orders", 2): 1},
    )
    shown = plan.as_dict()
    assert shown["skipped_events"] == 5
    assert shown["target"] is None
    assert not shown["executed"]
    assert [p["delta"] for p in shown["partitions"]] == [6, None]
    assert shown["partitions"][0]["topic"] == "exigo.orders"
