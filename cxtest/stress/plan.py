"""What a stress exercise does over time: its load shape (k6's executors), think time and stop.

    stress:                                  # in the scenario file, or from `cxtest stress` options
      users: 100                             # constant users ...
      duration: 5m
      # stages: [{target: 300, duration: 2m}, {target: 300, duration: 5m}, {target: 0, duration: 1m}]
      # rate: 20                             # ... or constant arrival rate: iterations started a second
      # max_users: 300                       #     at most this many at once (calls up, conversations open)
      think: 1s                              # or [0.5s, 2s]: a pause between steps
      thresholds: ["p95(step:expect_prompt.prompt_latency) < 2s", "rate(failed) < 1%"]
      abort_on_fail: false                   # stop as soon as a threshold is clearly lost
      max_duration: 10m                      # the hard stop, whatever the shape says

A shape answers two questions for any moment: how many users should be running
(users, stages) or how many iterations should have started by now (rate). Workers
each take a share of either, so the same plan drives one process, one per core, or
Ray actors on many machines.
"""

from __future__ import annotations

import math

from pydantic import model_validator

from cxtest.model import StressSettings


class StressPlan(StressSettings):
    """A complete plan: the scenario's `stress:` settings with the command line's over them."""

    @model_validator(mode="after")
    def _one_shape(self) -> "StressPlan":
        if self.rate is not None:
            if self.users is not None:
                raise ValueError("give users (constant users) or rate (iterations a second), not both")
            if not self.stages and self.duration is None:
                raise ValueError("a rate needs a duration (e.g. duration: 5m) or stages")
        elif self.stages:
            if self.users is not None or self.duration is not None:
                raise ValueError("stages set users and duration themselves: give stages alone")
        elif self.users is None or self.duration is None:
            raise ValueError("give users and duration (e.g. users: 100, duration: 5m), stages, or rate and duration")
        return self

    # -- the shape over time

    @property
    def arrival(self) -> bool:
        """Iterations start at a rate (an open model) rather than as fast as users can do them."""
        return self.rate is not None

    @property
    def length(self) -> float:
        """How long the shape lasts, cut at max_duration."""
        natural = sum(stage.duration for stage in self.stages) if self.stages else float(self.duration or 0)
        return min(natural, self.max_duration) if self.max_duration is not None else natural

    def _along_stages(self, t: float, start: float) -> float:
        level, at = start, 0.0
        for stage in self.stages:
            if t < at + stage.duration:
                return level + (stage.target - level) * (t - at) / stage.duration if stage.duration else stage.target
            level, at = stage.target, at + stage.duration
        return level

    def users_at(self, t: float) -> float:
        """Users that should be running t seconds in (closed model)."""
        if t >= self.length:
            return 0.0
        if self.stages and not self.arrival:
            return self._along_stages(t, 0.0)
        return float(self.users or 0)

    def rate_at(self, t: float) -> float:
        """Iterations a second that should start t seconds in (open model)."""
        if t >= self.length or self.rate is None:
            return 0.0
        return self._along_stages(t, self.rate) if self.stages else self.rate

    def started_by(self, t: float) -> float:
        """Iterations that should have started by t (the integral of rate_at), for pacing on a grid."""
        t = min(t, self.length)
        if not self.stages:
            return (self.rate or 0.0) * t
        total, level, at = 0.0, self.rate or 0.0, 0.0
        for stage in self.stages:
            span = min(stage.duration, max(0.0, t - at))
            if stage.duration:
                end_level = level + (stage.target - level) * span / stage.duration
                total += (level + end_level) / 2 * span
            level, at = stage.target, at + stage.duration
            if t <= at:
                break
        return total

    @property
    def peak_users(self) -> int:
        """The most users at once the plan asks for (with a rate: max_users)."""
        if self.arrival:
            return self.max_users or max(1, math.ceil(self.peak_rate * 10))
        if self.stages:
            return math.ceil(max(stage.target for stage in self.stages))
        return self.users or 0

    @property
    def peak_rate(self) -> float:
        if not self.arrival:
            return 0.0
        return max([self.rate or 0.0, *(stage.target for stage in self.stages)])

    def describe(self) -> str:
        """One line a person reads before saying yes: the peak and how long."""
        how_long = f"{self.length:g}s"
        if self.arrival:
            return f"up to {self.peak_rate:g} iterations a second, at most {self.peak_users} at once, for {how_long}"
        shape = "ramping to" if self.stages else "constant"
        return f"{shape} {self.peak_users} users for {how_long}"

    def share(self, index: int, workers: int) -> "Share":
        return Share(self, index, workers)


class Share:
    """One worker's part of a plan: its users (an even split, the first workers taking the remainder) or its rate
    (every n-th iteration of the plan's grid, n the workers taking part).

    Not every worker need take part from the start: `active` of them do, and activate() lets
    more in from an iteration (arrival rate) or a moment (users) on. A busy event loop serves
    more iterations per CPU second than two idle ones (bench/stress_chat.py), so the coordinator
    adds workers as the ones taking part get busy.
    """

    def __init__(self, plan: StressPlan, index: int, workers: int, active: int | None = None):
        self.plan, self.index, self.workers = plan, index, workers
        # (from iteration, from moment, workers taking part), in the order they were decided
        self.steps: list[tuple[int, float, int]] = [(0, 0.0, min(workers, active or workers))]

    def activate(self, active: int, from_iteration: int, from_t: float) -> None:
        """From the plan's iteration `from_iteration` (arrival rate) or from `from_t` (users) on, `active` workers take part."""
        self.steps.append((from_iteration, from_t, min(self.workers, active)))

    @property
    def active(self) -> int:
        """Workers taking part, as last decided."""
        return self.steps[-1][2]

    def _part(self, total: float, active: int) -> int:
        if self.index >= active:
            return 0
        whole = math.floor(total + 1e-9)
        return whole // active + (1 if self.index < whole % active else 0)

    def users_at(self, t: float) -> int:
        active = next((n for _, since, n in reversed(self.steps[1:]) if since <= t), self.steps[0][2])
        return self._part(self.plan.users_at(t), active)

    def started_by(self, t: float) -> int:
        """Iterations this worker should have started by t: of the plan's k-th iteration, those with k % active == index."""
        total = math.floor(self.plan.started_by(t) + 1e-9)
        mine = 0
        for step, (first, _, active) in enumerate(self.steps):
            end = min(total, self.steps[step + 1][0] if step + 1 < len(self.steps) else total)
            if end > first and self.index < active:
                mine += _owned_below(end, self.index, active) - _owned_below(first, self.index, active)
        return mine

    @property
    def max_users(self) -> int:
        return max(1, self._part(self.plan.peak_users, self.active))


def _owned_below(end: int, index: int, active: int) -> int:
    """How many k in [0, end) have k % active == index."""
    return max(0, (end - index + active - 1) // active)
