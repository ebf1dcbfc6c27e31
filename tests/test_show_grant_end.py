"""What `pairkit join` tells a guest about when its access ends (cli/show.py ``role_text``).

Attack review atk23, finding F6 (low): the line said "guest until HH:MM" with no date, so a
grant of 25 hours read as one of 1, and one of 48 hours as ending in the next minutes
(`--guest-hours` allows a year).  An end on another day says its date, as `pairkit peers` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pairkit.cli.show import role_text
from pairkit.pairing.cloud import Role
from pairkit.pairing.service import Membership

#: 2026-12-07 12:00 UTC
NOON = 1_796_644_800


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _guest(seconds: int) -> Membership:
    return Membership(role=Role.GUEST, expires=NOON + seconds)


def test_an_end_later_today_says_the_time_only() -> None:
    assert role_text(_guest(3_600), now=NOON) == "guest until 13:00"


@pytest.mark.parametrize(("hours", "shown"), [
    (13, "guest until 2026-12-08 01:00"),
    (25, "guest until 2026-12-08 13:00"),
    (48, "guest until 2026-12-09 12:00"),
    (8_784, "guest until 2027-12-08 12:00"),
])
def test_an_end_on_another_day_says_its_date(hours: int, shown: str) -> None:
    assert role_text(_guest(hours * 3_600), now=NOON) == shown


def test_a_grant_of_one_hour_and_one_of_a_day_read_apart() -> None:
    assert role_text(_guest(3_600), now=NOON) != role_text(_guest(25 * 3_600), now=NOON)
