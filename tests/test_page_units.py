"""The status page's pure parts: min/max downsampling and the signed session cookie."""

from __future__ import annotations

import random

from chi_companion.page.downsample import min_max
from chi_companion.page.session import Sessions


def test_min_max_keeps_extremes_order_and_bound() -> None:
    rng = random.Random(16)
    points = [(float(t), rng.uniform(0, 100)) for t in range(3600)]
    points[1234] = (1234.0, 5000.0)  # a one-second spike
    points[2345] = (2345.0, -50.0)
    out = min_max(points, 400)
    assert len(out) <= 800
    assert (1234.0, 5000.0) in out and (2345.0, -50.0) in out
    assert [t for t, _ in out] == sorted(t for t, _ in out)
    assert set(out) <= set(points)


def test_min_max_leaves_short_series_alone() -> None:
    points = [(float(t), float(t % 7)) for t in range(500)]
    assert min_max(points, 400) == points
    assert min_max([], 400) == []


def test_session_cookie_roundtrip_expiry_and_tampering() -> None:
    sessions = Sessions(ttl_seconds=60)
    cookie, issued = sessions.issue("chi-eclipse-01", now=1000.0)
    assert sessions.read(cookie, now=1059.0) == issued
    assert sessions.read(cookie, now=1060.0) is None  # expired
    text, sig = cookie.split(".")
    assert sessions.read(f"{text}.{sig[::-1]}", now=1001.0) is None
    assert Sessions(ttl_seconds=60).read(cookie, now=1001.0) is None  # another secret
    operator_cookie, _ = sessions.issue(None, now=1000.0)
    assert sessions.read(operator_cookie, now=1001.0).is_operator
    for junk in ("", ".", "a.b.c", "é.x", None):
        assert sessions.read(junk, now=1001.0) is None


def test_csrf_token_is_bound_to_the_session() -> None:
    sessions = Sessions()
    _, a = sessions.issue(None)
    _, b = sessions.issue(None)
    assert sessions.check_csrf(a, sessions.csrf_token(a))
    assert not sessions.check_csrf(a, sessions.csrf_token(b))
    assert not sessions.check_csrf(a, None) and not sessions.check_csrf(a, "")
