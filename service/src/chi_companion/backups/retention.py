"""Which backups a retention policy keeps: restic ``forget`` semantics, as pure functions.

The rules follow restic's ``ApplyPolicy`` (internal/data/snapshot_policy.go) so an operator
who knows ``restic forget --keep-daily 14`` knows exactly what ``keep_daily = 14`` does here:

* backups are walked newest first; each rule has a bucket function (the hour, day, ISO week,
  month or year of the receive time; ``keep_last`` gives every backup its own bucket);
* a rule with count left keeps a backup whose bucket differs from the bucket of the last
  backup that rule kept, i.e. the newest backup of each bucket, and uses up one count;
* rules overlap: one backup can be kept by several rules at once and uses a count of each;
* a rule that still has count left when it reaches the oldest backup keeps that one too even
  if it shares a bucket (reason "oldest <rule>"), so a short history is kept whole in length;
* a policy with no rule above zero is *empty* and keeps everything (restic refuses to forget
  anything without a policy): a typo must never wipe a device's history.

Buckets use UTC, the time the companion records: the Pi has no battery-backed clock, so the
server's receive time is the only trustworthy one, and UTC has no repeated or missing hours.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from ..core.config import RETENTION_RULES

K = TypeVar("K")

RULES = RETENTION_RULES
UNLIMITED = -1  # restic's "keep all of this kind" (e.g. --keep-daily unlimited)
EMPTY_POLICY_REASON = "policy is empty"

Bucket = Callable[[datetime, int], Hashable]


def _bucket_last(_when: datetime, index: int) -> Hashable:
    return ("n", index)  # every backup is its own bucket


def _bucket_hour(when: datetime, _index: int) -> Hashable:
    return (when.year, when.month, when.day, when.hour)


def _bucket_day(when: datetime, _index: int) -> Hashable:
    return (when.year, when.month, when.day)


def _bucket_week(when: datetime, _index: int) -> Hashable:
    # ISO year and week: 2025-12-29 (a Monday) is in 2026-W01, not in "week 52 of 2025".
    iso = when.isocalendar()
    return (iso.year, iso.week)


def _bucket_month(when: datetime, _index: int) -> Hashable:
    return (when.year, when.month)


def _bucket_year(when: datetime, _index: int) -> Hashable:
    return when.year


# Same order as restic's buckets, so reasons are listed in the same order as restic lists them.
BUCKETS: tuple[tuple[str, str, Bucket], ...] = (
    ("keep_last", "last", _bucket_last),
    ("keep_hourly", "hourly", _bucket_hour),
    ("keep_daily", "daily", _bucket_day),
    ("keep_weekly", "weekly", _bucket_week),
    ("keep_monthly", "monthly", _bucket_month),
    ("keep_yearly", "yearly", _bucket_year),
)


@dataclass(frozen=True)
class Decision(Generic[K]):
    """What the policy says about one backup. ``reasons`` is empty exactly when removed."""

    key: K
    when: datetime
    keep: bool
    reasons: tuple[str, ...]


def validate_policy(policy: Mapping[str, int]) -> None:
    """Raise ValueError for an unknown rule or a count below -1 (-1 means unlimited)."""
    for rule, count in policy.items():
        if rule not in RULES:
            raise ValueError(f"unknown retention rule {rule!r} (known: {', '.join(RULES)})")
        if not isinstance(count, int) or isinstance(count, bool) or count < UNLIMITED:
            raise ValueError(f"{rule} must be an integer >= 0 (or -1 for unlimited)")


def is_empty(policy: Mapping[str, int]) -> bool:
    return all(policy.get(rule, 0) == 0 for rule in RULES)


def describe(policy: Mapping[str, int]) -> str:
    """A one-line summary for the CLI, e.g. ``keep 7 last, 14 daily``."""
    if is_empty(policy):
        return "keep everything (empty policy)"
    parts = []
    for rule, label, _bucket in BUCKETS:
        count = policy.get(rule, 0)
        if count == UNLIMITED:
            parts.append(f"all {label}")
        elif count > 0:
            parts.append(f"{count} {label}")
    return "keep " + ", ".join(parts)


def apply_policy(
    items: Iterable[tuple[K, datetime]],
    policy: Mapping[str, int],
    keep_within: timedelta | None = None,
) -> list[Decision[K]]:
    """Decide keep/remove for each ``(key, receive time)``; returns decisions newest first.

    Items with equal times keep the order they were given in (the sort is stable), so a
    caller that passes them newest first by (time, id) gets a deterministic answer.

    ``keep_within`` is restic's ``--keep-within``: every item received within that long of
    the newest one is kept as well (reason ``within``), so junk uploads cannot push recent
    good backups out of the keep_* counts.
    """
    decisions = _apply_rules(items, policy)
    if not keep_within or not decisions:
        return decisions
    cutoff = _utc(decisions[0].when) - keep_within
    return [
        Decision(d.key, d.when, True, (*d.reasons, "within"))
        if _utc(d.when) >= cutoff and "within" not in d.reasons
        else d
        for d in decisions
    ]


def _apply_rules(
    items: Iterable[tuple[K, datetime]], policy: Mapping[str, int]
) -> list[Decision[K]]:
    validate_policy(policy)
    ordered = sorted(items, key=lambda item: _utc(item[1]), reverse=True)
    if is_empty(policy):
        return [Decision(key, when, True, (EMPTY_POLICY_REASON,)) for key, when in ordered]

    counts = [policy.get(rule, 0) for rule, _label, _bucket in BUCKETS]
    last_bucket: list[Hashable] = [None] * len(BUCKETS)
    oldest = len(ordered) - 1
    decisions: list[Decision[K]] = []
    for index, (key, when) in enumerate(ordered):
        moment = _utc(when)
        reasons: list[str] = []
        for slot, (_rule, label, bucket_of) in enumerate(BUCKETS):
            if counts[slot] == 0:
                continue
            bucket = bucket_of(moment, index)
            if bucket != last_bucket[slot] or index == oldest:
                # Not a new bucket but the oldest backup, with count still left: restic keeps it
                # to stretch the kept history as far back as the counts allow.
                reasons.append(label if bucket != last_bucket[slot] else f"oldest {label}")
                last_bucket[slot] = bucket
                if counts[slot] > 0:
                    counts[slot] -= 1
        decisions.append(Decision(key, when, bool(reasons), tuple(reasons)))
    return decisions


def _utc(when: datetime) -> datetime:
    # A naive time would silently bucket in whatever zone it was made in; refuse it loudly.
    if when.tzinfo is None:
        raise ValueError(f"receive time {when!r} has no timezone")
    return when.astimezone(UTC)
