"""Stress plans: the load shapes over time, and how workers share them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cxtest.stress.plan import Share, StressPlan


def test_constant_users_hold_for_the_duration_then_stop() -> None:
    """`users: 10, duration: 30s` is 10 users from 0 to 30 s and none after."""
    plan = StressPlan(users=10, duration="30s")
    assert [plan.users_at(t) for t in (0, 15, 29.9, 30)] == [10, 10, 10, 0]
    assert (plan.length, plan.peak_users, plan.arrival) == (30, 10, False)


def test_stages_ramp_linearly_between_targets() -> None:
    """Stages move linearly from the previous target (0 at first) to their own."""
    plan = StressPlan(stages=[{"target": 100, "duration": "10s"}, {"target": 100, "duration": "20s"}, {"target": 0, "duration": "10s"}])
    assert [plan.users_at(t) for t in (0, 5, 10, 20, 35, 40)] == [0, 50, 100, 100, 50, 0]
    assert (plan.length, plan.peak_users) == (40, 100)


def test_arrival_rate_counts_iterations_started_by_now() -> None:
    """A constant rate of 20 a second has started 20 t iterations by t; a ramping one integrates its stages."""
    plan = StressPlan(rate=20, duration="10s", max_users=50)
    assert [plan.started_by(t) for t in (0, 0.5, 10, 12)] == [0, 10, 200, 200]
    ramp = StressPlan(rate=0.001, stages=[{"target": 10, "duration": "10s"}, {"target": 10, "duration": "10s"}])
    assert ramp.started_by(10) == pytest.approx(50, abs=0.01)  # from ~0 to 10 a second: the triangle
    assert ramp.started_by(20) == pytest.approx(150, abs=0.02)
    assert ramp.peak_rate == 10


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_shares_add_up_to_the_plan_at_every_moment(workers: int) -> None:
    """However many workers, their users and started iterations add up to the plan's, never more."""
    users = StressPlan(stages=[{"target": 37, "duration": "10s"}, {"target": 5, "duration": "10s"}])
    rate = StressPlan(rate=13.5, duration="20s", max_users=9)
    for t in (0.3, 4.2, 9.99, 12.5, 19.9):
        assert sum(users.share(i, workers).users_at(t) for i in range(workers)) == int(users.users_at(t) + 1e-9)
        assert sum(rate.share(i, workers).started_by(t) for i in range(workers)) == int(rate.started_by(t) + 1e-9)
    assert sum(rate.share(i, workers).max_users for i in range(workers)) >= 9


def test_workers_taken_on_midway_still_add_up_to_the_plan() -> None:
    """One worker of three takes everything, then two from iteration 40 / 4 s, then three: no iteration or user lost or doubled."""
    users = StressPlan(stages=[{"target": 37, "duration": "10s"}, {"target": 5, "duration": "10s"}])
    rate = StressPlan(rate=13.5, duration="20s", max_users=9)
    shares = {plan: [Share(plan, i, 3, active=1) for i in range(3)] for plan in (users, rate)}
    for plan_shares in shares.values():
        for share in plan_shares:
            share.activate(2, from_iteration=40, from_t=4.0)
            share.activate(3, from_iteration=150, from_t=11.0)
    for t in (0.3, 2.9, 4.2, 9.99, 11.5, 19.9):
        assert sum(s.users_at(t) for s in shares[users]) == int(users.users_at(t) + 1e-9), t
        assert sum(s.started_by(t) for s in shares[rate]) == int(rate.started_by(t) + 1e-9), t
    assert [s.users_at(2.9) for s in shares[users]] == [int(users.users_at(2.9) + 1e-9), 0, 0]
    assert [s.started_by(20) for s in shares[rate]] == [
        40 + 55 + 40, 55 + 40, 40,  # all of the first 40; every other of the next 110; every third of the last 120
    ]


def test_max_duration_cuts_the_shape() -> None:
    """The hard stop ends the plan early whatever its stages say."""
    plan = StressPlan(users=5, duration="10m", max_duration="30s")
    assert plan.length == 30 and plan.users_at(31) == 0


def test_think_is_one_duration_or_a_range() -> None:
    """`think: 1s` pauses exactly a second; `[0.5s, 2s]` is a range."""
    assert StressPlan(users=1, duration="1s", think="1s").think == (1.0, 1.0)
    assert StressPlan(users=1, duration="1s", think=["500ms", "2s"]).think == (0.5, 2.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"users": 5}, "give users and duration"),
        ({"users": 5, "rate": 3, "duration": "1m"}, "not both"),
        ({"rate": 3}, "a rate needs a duration"),
        ({"stages": [{"target": 3, "duration": "1m"}], "users": 3}, "give stages alone"),
        ({"users": 5, "duration": "1m", "thresholds": ["p95(latency) <"]}, "threshold"),
    ],
)
def test_incomplete_or_contradictory_plans_say_what_to_give(fields: dict, message: str) -> None:
    """A plan without a shape, or with two, is refused with the fix in the message."""
    with pytest.raises(ValidationError, match=message):
        StressPlan.model_validate(fields)


def test_describe_says_the_peak_and_how_long() -> None:
    """The line printed before a run names the peak load and the duration."""
    assert StressPlan(users=300, duration="5m").describe() == "constant 300 users for 300s"
    assert StressPlan(rate=20, duration="1m", max_users=100).describe() == "up to 20 iterations a second, at most 100 at once, for 60s"
