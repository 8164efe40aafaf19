"""Retention policy (restic `forget` semantics) against hand-written tables of receive times.

Every expected keep/remove below was worked out by hand from the rules in retention.py's
docstring, walking the list newest first; the comments on each row say which bucket it is in,
so a reader can check the expectation without running anything.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from chi_companion.backups.retention import (
    EMPTY_POLICY_REASON,
    apply_policy,
    describe,
    validate_policy,
)
from chi_companion.core.errors import RateLimited
from chi_companion.core.ratelimit import RateLimit


def t(text: str) -> datetime:
    """'2026-03-04 09:00' as UTC (or with an explicit offset, e.g. '...+02:00')."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run(rows: list[tuple[str, str]], policy: dict[str, int]) -> dict[str, tuple[str, ...]]:
    """label -> reasons (empty tuple = removed), with the rows given oldest first on purpose:
    the policy must sort them itself."""
    decisions = apply_policy([(label, t(when)) for label, when in reversed(rows)], policy)
    assert [d.key for d in decisions] == [label for label, _ in rows], "not newest first"
    for d in decisions:
        assert d.keep == bool(d.reasons)
    return {d.key: d.reasons for d in decisions}


def kept(result: dict[str, tuple[str, ...]]) -> list[str]:
    return [label for label, reasons in result.items() if reasons]


# Each case: rows newest first (label, UTC time), policy, labels expected kept.
CASES = {
    "daily across midnight": (
        [
            ("a", "2026-03-04 09:00"),  # day 03-04 -> keep (daily 3 -> 2)
            ("b", "2026-03-04 01:00"),  # same day  -> remove
            ("c", "2026-03-03 23:59:59"),  # day 03-03 -> keep (2 -> 1)
            ("d", "2026-03-03 00:00:00"),  # same day  -> remove
            ("e", "2026-03-02 23:59:59"),  # day 03-02 -> keep (1 -> 0)
            ("f", "2026-03-01 12:00"),  # count used up -> remove (no "oldest": count is 0)
        ],
        {"keep_daily": 3},
        ["a", "c", "e"],
    ),
    "daily, a rule running out of backups keeps the oldest": (
        [
            ("a", "2026-03-04 10:00"),  # 03-04 keep (5 -> 4)
            ("b", "2026-03-04 08:00"),  # same day remove
            ("c", "2026-03-03 10:00"),  # 03-03 keep (4 -> 3)
            ("d", "2026-03-03 08:00"),  # same day, but the oldest and count left -> keep
        ],
        {"keep_daily": 5},
        ["a", "c", "d"],
    ),
    "hourly across the hour": (
        [
            ("a", "2026-03-01 10:59:59"),  # hour 10 keep (2 -> 1)
            ("b", "2026-03-01 10:00:00"),  # same hour remove
            ("c", "2026-03-01 09:59:59"),  # hour 09 keep (1 -> 0)
            ("d", "2026-03-01 09:00:00"),  # count used up remove
        ],
        {"keep_hourly": 2},
        ["a", "c"],
    ),
    "ISO weeks across the new year (2025-12-29 is in 2026-W01)": (
        [
            ("a", "2026-01-05 00:00"),  # Mon, 2026-W02 keep (3 -> 2)
            ("b", "2026-01-04 23:59"),  # Sun, 2026-W01 keep (2 -> 1)
            ("c", "2025-12-29 00:00"),  # Mon, 2026-W01 (ISO year 2026!) remove
            ("d", "2025-12-28 23:59"),  # Sun, 2025-W52 keep (1 -> 0)
            ("e", "2025-12-22 10:00"),  # Mon, 2025-W52 remove
            ("f", "2025-12-21 10:00"),  # Sun, 2025-W51 count used up remove
        ],
        {"keep_weekly": 3},
        ["a", "b", "d"],
    ),
    "ISO week 53 spanning 2020/2021": (
        [
            ("a", "2021-01-04 00:00"),  # Mon, 2021-W01 keep (3 -> 2)
            ("b", "2021-01-03 23:00"),  # Sun, 2020-W53 keep (2 -> 1)
            ("c", "2020-12-31 12:00"),  # Thu, 2020-W53 remove
            ("d", "2020-12-28 00:00"),  # Mon, 2020-W53 remove
            ("e", "2020-12-27 23:00"),  # Sun, 2020-W52 keep (1 -> 0)
        ],
        {"keep_weekly": 3},
        ["a", "b", "e"],
    ),
    "overlapping last/monthly/yearly across month and year ends": (
        [
            ("a", "2026-03-01 00:00"),  # last(2->1) month 2026-03(3->2) year 2026(2->1)
            ("b", "2026-02-28 23:59"),  # last(1->0) month 2026-02(2->1)
            ("c", "2026-02-01 00:00"),  # month 2026-02 again, year 2026 again -> remove
            ("d", "2026-01-31 23:59"),  # month 2026-01 (1->0) keep
            ("e", "2025-12-31 23:59:59"),  # monthly used up; year 2025 (1->0) keep
            ("f", "2025-12-01 00:00"),  # every count used up -> remove
            ("g", "2025-01-01 00:00"),  # remove
            ("h", "2024-12-31 23:59"),  # remove
            ("i", "2024-06-15 12:00"),  # oldest, but no count left anywhere -> remove
        ],
        {"keep_last": 2, "keep_monthly": 3, "keep_yearly": 2},
        ["a", "b", "d", "e"],
    ),
    "yearly, oldest kept while count is left": (
        [
            ("a", "2026-06-01 00:00"),  # 2026 keep (5 -> 4)
            ("b", "2026-01-01 00:00"),  # 2026 remove
            ("c", "2025-12-31 23:59"),  # 2025 keep (4 -> 3)
            ("d", "2025-06-01 00:00"),  # 2025 again, but oldest with count left -> keep
        ],
        {"keep_yearly": 5},
        ["a", "c", "d"],
    ),
    "full GFS over the new year": (
        [
            ("a", "2026-01-05 08:00"),  # last, daily 01-05, week 2026-W02, month 2026-01, 2026
            ("b", "2026-01-05 07:00"),  # last (1 -> 0) only
            ("c", "2026-01-04 20:00"),  # daily 01-04 (-> 0), week 2026-W01 (-> 0)
            ("d", "2026-01-01 09:00"),  # daily/weekly used up; month and year repeat -> remove
            ("e", "2025-12-31 23:00"),  # month 2025-12 (-> 0), year 2025 (-> 0)
            ("f", "2025-12-28 12:00"),  # all counts used up -> remove
            ("g", "2025-11-30 12:00"),  # remove
            ("h", "2024-12-31 12:00"),  # remove (a Tuesday in ISO week 2025-W01)
            ("i", "2024-06-01 12:00"),  # remove
        ],
        {
            "keep_last": 2,
            "keep_daily": 2,
            "keep_weekly": 2,
            "keep_monthly": 2,
            "keep_yearly": 2,
        },
        ["a", "b", "c", "e"],
    ),
    "keep_last only": (
        [
            ("a", "2026-03-01 10:00"),
            ("b", "2026-03-01 09:30"),  # same hour and day: keep_last does not care
            ("c", "2026-03-01 09:00"),
            ("d", "2026-02-01 09:00"),
            ("e", "2025-02-01 09:00"),
        ],
        {"keep_last": 3},
        ["a", "b", "c"],
    ),
    "unlimited daily (-1): newest of every day, and the oldest": (
        [
            ("a", "2026-03-03 10:00"),  # 03-03 keep
            ("b", "2026-03-03 09:00"),  # remove
            ("c", "2026-03-02 10:00"),  # 03-02 keep
            ("d", "2026-03-02 09:00"),  # remove
            ("e", "2026-03-01 10:00"),  # 03-01 keep
            ("f", "2026-03-01 09:00"),  # oldest, an unlimited rule never runs out -> keep
        ],
        {"keep_daily": -1},
        ["a", "c", "e", "f"],
    ),
    "buckets are UTC: 01:30 at +02:00 is the previous UTC day": (
        [
            ("a", "2026-03-02 01:30+02:00"),  # = 03-01 23:30Z, day 03-01 keep (2 -> 1)
            ("b", "2026-03-01 12:00"),  # day 03-01 again -> remove
            ("c", "2026-02-28 12:00"),  # day 02-28 keep (1 -> 0)
        ],
        {"keep_daily": 2},
        ["a", "c"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_policy_table(name: str) -> None:
    rows, policy, expected = CASES[name]
    result = run(rows, policy)
    assert kept(result) == expected, result


def test_reasons_are_restic_style() -> None:
    rows, policy, _ = CASES["full GFS over the new year"]
    result = run(rows, policy)
    assert result["a"] == ("last", "daily", "weekly", "monthly", "yearly")
    assert result["b"] == ("last",)
    assert result["c"] == ("daily", "weekly")
    assert result["d"] == ()
    assert result["e"] == ("monthly", "yearly")


def test_oldest_reason_names_each_rule_that_kept_it() -> None:
    rows = [
        ("a", "2026-03-02 10:00"),  # daily (10 -> 9), monthly 2026-03 (10 -> 9)
        ("b", "2026-03-02 09:00"),  # same day, same month -> remove
        ("c", "2026-03-01 10:00"),  # daily 03-01 (9 -> 8); month repeats
        ("d", "2026-03-01 09:00"),  # oldest: same day and month, both rules have count left
    ]
    result = run(rows, {"keep_daily": 10, "keep_monthly": 10})
    assert result == {
        "a": ("daily", "monthly"),
        "b": (),
        "c": ("daily",),
        "d": ("oldest daily", "oldest monthly"),
    }


@pytest.mark.parametrize("policy", [{}, {"keep_last": 0, "keep_daily": 0, "keep_yearly": 0}])
def test_empty_policy_keeps_everything(policy: dict[str, int]) -> None:
    base = t("2026-03-01 00:00")
    items = [(i, base - timedelta(days=i)) for i in range(50)]
    decisions = apply_policy(items, policy)
    assert all(d.keep and d.reasons == (EMPTY_POLICY_REASON,) for d in decisions)
    assert len(decisions) == 50
    assert describe(policy) == "keep everything (empty policy)"


def test_no_backups_no_decisions() -> None:
    assert apply_policy([], {"keep_last": 3}) == []


def test_equal_times_keep_the_given_order() -> None:
    when = t("2026-03-01 10:00")
    decisions = apply_policy([(3, when), (2, when), (1, when)], {"keep_last": 1})
    assert [(d.key, d.keep) for d in decisions] == [(3, True), (2, False), (1, False)]


def test_bad_policies_and_times_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown retention rule"):
        validate_policy({"keep_forever": 1})
    with pytest.raises(ValueError, match="integer"):
        validate_policy({"keep_daily": -2})
    with pytest.raises(ValueError, match="timezone"):
        apply_policy([(1, datetime(2026, 3, 1))], {"keep_last": 1})


def test_describe() -> None:
    assert describe({"keep_last": 7, "keep_daily": 14}) == "keep 7 last, 14 daily"
    assert describe({"keep_weekly": -1}) == "keep all weekly"


def test_keep_within_keeps_everything_near_the_newest_whatever_the_rules() -> None:
    # restic --keep-within 7d: 30 junk backups today and a good one 3 days ago all stay;
    # the one 8 days before the newest goes under keep_last = 1.
    newest = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    items = [(f"junk{i}", newest - timedelta(minutes=i)) for i in range(30)]
    items += [("good", newest - timedelta(days=3)), ("old", newest - timedelta(days=8))]
    decisions = apply_policy(items, {"keep_last": 1}, keep_within=timedelta(days=7))
    kept = {d.key for d in decisions if d.keep}
    assert kept == {k for k, _ in items} - {"old"}
    assert next(d for d in decisions if d.key == "good").reasons == ("within",)
    assert next(d for d in decisions if d.key == "junk0").reasons == ("last", "within")
    # Without keep_within the same rules keep only the newest.
    assert [d.key for d in apply_policy(items, {"keep_last": 1}) if d.keep] == ["junk0"]


def test_rate_limit_burst_then_refill() -> None:
    now = [0.0]
    limit = RateLimit("uploads", per_hour=12, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limit.take("pi")
    with pytest.raises(RateLimited) as refused:
        limit.take("pi")
    assert refused.value.retry_after == 300  # one token every 5 minutes
    limit.take("other-pi")  # buckets are per device
    now[0] += 300
    limit.take("pi")
    with pytest.raises(RateLimited):
        limit.take("pi")
