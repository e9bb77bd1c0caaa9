"""k6-style thresholds: `p95(step:expect_prompt.prompt_latency) < 2s`, `rate(failed) < 1%`.

A threshold is STAT(METRIC) OP LIMIT. The limit is in natural units: a duration metric
needs a unit (800ms, 2s: a bare 800 could mean either), a rate is a percent or a share
(1% or 0.01), a count is a plain number, other measures are plain numbers (mos, dBFS).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Iterable

from cxtest.model import format_duration, parse_duration
from cxtest.stress.stats import RATES, Metrics, is_seconds

FORM = "STAT(METRIC) OP LIMIT, e.g. p95(turn_latency) < 800ms or rate(failed) < 1%"
STATS = "p50..p99.9, med, avg, min, max, count or rate"
OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
# What a failed threshold shows between what was seen and the limit: the relation that held instead.
BROKEN = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!="}
MIN_RUNS = 100  # below this many finished iterations a failing threshold may still come back

_STAT = re.compile(r"\s*([A-Za-z][\w.]*)\s*\(")
_OPERATOR = re.compile(r"\s*(<=|>=|==|<|>)(?![=<>!])\s*(.*?)\s*$")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


@dataclass(frozen=True)
class Threshold:
    text: str  # as written: "p95(step:expect_prompt.prompt_latency) < 2s"
    stat: str  # p95 / avg / min / max / med / count / rate
    metric: str  # "step:expect_prompt.prompt_latency", "failed", "turn_latency"
    op: str  # < <= > >= ==
    limit: float  # natural units: 2s -> 2.0, 1% -> 0.01, 800ms -> 0.8


@dataclass(frozen=True)
class Verdict:
    threshold: Threshold
    seen: float | None
    ok: bool
    text: str  # "p95(turn_latency) = 412ms < 800ms: passed" / "rate(failed) = 3.2% >= 1%: FAILED" / "... : no data"


def parse_threshold(text: str) -> Threshold:
    """One threshold expression; ValueError saying what is wrong and showing the form."""

    def bad(problem: str) -> ValueError:
        return ValueError(f"bad threshold {text!r}: {problem} (write {FORM})")

    head = _STAT.match(text)
    if head is None:
        raise bad("it does not start with a stat and a metric in parentheses")
    stat = _check_stat(head.group(1), bad)
    close = text.rfind(")")
    if close < head.end():
        raise bad("the metric's closing parenthesis is missing")
    metric = text[head.end() : close].strip()
    if not metric:
        raise bad("the metric in parentheses is empty")
    counted = metric in RATES or metric.startswith("checks:")
    if counted and stat not in ("rate", "count"):
        raise bad(f"{metric!r} is counted, not measured: use rate({metric}) or count({metric})")
    if stat == "rate" and not counted:
        raise bad(f"rate() takes one of {', '.join(RATES)} or checks:NAME (one check's pass share), not {metric!r}")
    rest = text[close + 1 :]
    tail = _OPERATOR.match(rest)
    if tail is None:
        seen = rest.strip().split(" ")[0] if rest.strip() else "nothing"
        raise bad(f"{seen!r} is not an operator: use <, <=, >, >= or ==")
    op, limit_text = tail.groups()
    if not limit_text:
        raise bad(f"no limit after {op!r}")
    limit = _limit(stat, metric, limit_text, bad)
    return Threshold(text=text.strip(), stat=stat, metric=metric, op=op, limit=limit)


def _check_stat(stat: str, bad) -> str:
    if stat in ("avg", "min", "max", "med", "count", "rate"):
        return stat
    if stat.startswith("p") and _NUMBER.fullmatch(stat[1:]):
        if not 0 <= float(stat[1:]) <= 100:
            raise bad(f"percentile {stat[1:]} is outside 0-100")
        return stat
    raise bad(f"unknown stat {stat!r}: use {STATS}")


def _limit(stat: str, metric: str, text: str, bad) -> float:
    """The limit in natural units, with the unit the stat and metric call for."""
    if stat == "rate":
        if text.endswith("%"):
            number = text[:-1].strip()
            if not _NUMBER.fullmatch(number):
                raise bad(f"{text!r} is not a percent")
            if not 0 <= float(number) <= 100:
                raise bad(f"{text!r} is outside 0-100%")
            return float(number) / 100
        if not _NUMBER.fullmatch(text) or not 0 <= float(text) <= 1:
            raise bad(f"a rate is a percent or a share: write e.g. 1% or 0.01, not {text!r}")
        return float(text)
    if text.endswith("%"):
        raise bad(f"a percent limit is for rate(); {stat}({metric}) takes {_unit_hint(stat, metric)}")
    if stat == "count":
        if not _NUMBER.fullmatch(text) or float(text) < 0:
            raise bad(f"count({metric}) takes a plain number of iterations or values, e.g. 0, not {text!r}")
        return float(text)
    if is_seconds(metric):
        if _NUMBER.fullmatch(text):
            raise bad(f"{metric} is a duration: give a unit, e.g. {text}ms or {text}s")
        try:
            return parse_duration(text)
        except ValueError:
            raise bad(f"{text!r} is not a duration: use e.g. 800ms, 2s or 1m30s") from None
    if not _NUMBER.fullmatch(text):
        raise bad(f"{metric} is not a duration: give a plain number, not {text!r}")
    return float(text)


def _unit_hint(stat: str, metric: str) -> str:
    if stat == "count":
        return "a plain number"
    return "a duration, e.g. 800ms" if is_seconds(metric) else "a plain number"


def show(threshold: Threshold, value: float) -> str:
    """A value of this threshold's stat as people write it: 412ms, 3.2%, 12, 3.5."""
    if threshold.stat == "rate":
        return f"{value * 100:.2f}".rstrip("0").rstrip(".") + "%"
    if threshold.stat == "count":
        return f"{value:.0f}"
    # Three significant digits: what the histograms hold (and never 1e+03).
    if is_seconds(threshold.metric):
        if abs(value) < 0.9995:
            return f"{value * 1000:.3g}ms"
        return f"{value:.3g}s" if abs(value) < 59.95 else format_duration(value)
    return f"{value:.3g}" if abs(value) < 999.5 else f"{value:.0f}"


def judge_one(threshold: Threshold, metrics: Metrics) -> Verdict:
    head = f"{threshold.stat}({threshold.metric})"
    limit = show(threshold, threshold.limit)
    seen = metrics.stat(threshold.stat, threshold.metric)
    if seen is None:
        # Nothing measured is not a pass: a misspelt metric or a run that finished nothing.
        return Verdict(threshold, None, False, f"{head} {threshold.op} {limit}: no data")
    if OPERATORS[threshold.op](seen, threshold.limit):
        return Verdict(threshold, seen, True, f"{head} = {show(threshold, seen)} {threshold.op} {limit}: passed")
    return Verdict(threshold, seen, False, f"{head} = {show(threshold, seen)} {BROKEN[threshold.op]} {limit}: FAILED")


def judge(thresholds: Iterable[Threshold | str], metrics: Metrics) -> list[Verdict]:
    """Each threshold against the metrics so far, in the order given."""
    return [judge_one(t if isinstance(t, Threshold) else parse_threshold(t), metrics) for t in thresholds]


def clearly_lost(threshold: Threshold, metrics: Metrics, finished_runs: int = MIN_RUNS) -> bool:
    """Failing now and not coming back: on at least `finished_runs` iterations (abort_on_fail).

    A count only grows, so a count past its upper limit is lost at once, however few runs finished.
    """
    verdict = judge_one(threshold, metrics)
    if verdict.ok or verdict.seen is None:
        return False
    if threshold.stat == "count" and threshold.op in ("<", "<=", "==") and verdict.seen > threshold.limit:
        return True
    return metrics.finished >= finished_runs
