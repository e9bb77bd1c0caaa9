"""What the iterations of a stress exercise did, in a form that merges exactly across processes.

Counters add up and HDR histograms add up bucket by bucket, so the totals of many workers
are the same figures one process would have counted: percentiles are read from merged
histograms, never averaged.

Values are integers in the histograms: durations (seconds) in microseconds, other measures
times 1000, `level` (dBFS, negative) negated first. Range 1 µs .. 1 h, 3 significant digits:
a value read back is within 0.1% of what was recorded.

record() is on the hot path (thousands of iterations a second): it only appends raw values
to per-metric lists. They are counted into their buckets in one numpy pass per metric, kept
as the non-empty buckets only (`Buckets`, which is also what goes over the wire), and added
into the full histograms when something reads them: a worker never builds one, and the
coordinator adds each second's buckets into its totals.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np
from hdrh.histogram import HdrHistogram

from cxtest.checks import SECONDS
from cxtest.model import Outcome, Result

LOWEST = 1
HIGHEST = 3_600_000_000  # one hour in microseconds
DIGITS = 3
OUTCOMES = ("passed", "degraded", "failed", "error")
RATES = (*OUTCOMES, "checks", "dropped")
NEGATED = frozenset({"level"})  # dBFS: always <= 0, and HDR histograms hold no negative values
MAX_REASONS = 200  # distinct error reasons kept; the rest count under OTHER_REASONS
OTHER_REASONS = "(other reasons)"
ENCODING = 2  # Metrics.encode's format: 1 was hdrh's V2 histograms
FLUSH_EVERY = 4096  # recorded iterations between two numpy passes, so pending raw values stay bounded
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")


def measure_of(metric: str) -> str:
    """The measure a metric name is about: `step:hear 'Hi'.prompt_latency` -> prompt_latency."""
    return metric.rpartition(".")[2] if metric.startswith("step:") else metric


def is_seconds(metric: str) -> bool:
    """Whether a metric is a duration in seconds (the rule of checks.show_measure, plus *duration)."""
    name = measure_of(metric)
    return name in SECONDS or name.endswith(("latency", "_time", "duration"))


@lru_cache(maxsize=4096)
def scale_of(metric: str) -> float:
    """Natural units -> histogram units: seconds to microseconds, other measures x1000, level negated."""
    name = measure_of(metric)
    factor = 1_000_000.0 if is_seconds(metric) else 1000.0
    return -factor if name in NEGATED else factor


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST, HIGHEST, DIGITS)


# --------------------------------------------------------------------------- reasons

# A parenthesised group holding more than words is what was seen ("(412ms)", "('Sorry…')", a path):
# it changes from run to run. Words only ("(step timeout)", "(degraded level)") say what kind of failure.
_SEEN = re.compile(r"\((?![A-Za-z \-]*\))[^()]*\)")
# Long numbers and hex runs outside parentheses are ids, ports or timestamps; short ones are limits and codes.
_IDS = re.compile(r"\b(?:\d{5,}|(?=[0-9a-f]*\d)[0-9a-f]{8,}(?:-[0-9a-f]{4,})*)\b")
_REASON_LENGTH = 200


def normalise(message: str) -> str:
    """A failure message with what changes between runs replaced, so the same failure groups.

    `latency (412ms) > 300ms` and `latency (530ms) > 300ms` both become `latency (…) > 300ms`:
    the seen values (in parentheses, Gatus style) and long numbers go; limits, status codes
    and quoted expectations outside parentheses stay. Only the first line is kept (chat
    failures append the transcript).
    """
    line = message.strip().split("\n", 1)[0]
    line = _IDS.sub("#", _SEEN.sub("(…)", line))
    return line if len(line) <= _REASON_LENGTH else line[: _REASON_LENGTH - 1] + "…"


def reason_of(result: Result) -> tuple[str, str]:
    """(reason, raw example) for a failed or errored iteration: its first bad step, else its first bad check."""
    for step in result.steps:
        if step.outcome in (Outcome.failed, Outcome.error):
            raw = step.message or step.outcome.value
            return f"step {step.index + 1} ({step.name}): {normalise(raw)}", f"step {step.index + 1} ({step.name}): {raw}"
    for check in result.checks:
        if check.outcome in (Outcome.failed, Outcome.error):
            return normalise(check.text), check.text
    raw = result.message or result.outcome.value
    return normalise(raw), raw


# --------------------------------------------------------------------------- histogram tables


@lru_cache(maxsize=1)
def _layout() -> tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]:
    """The bucket layout of our histograms, and per counts index its lowest, highest and middle value."""
    sample = new_histogram()
    unit = sample.unit_magnitude
    half_magnitude = sample.sub_bucket_half_count_magnitude
    half = sample.sub_bucket_half_count
    index = np.arange(sample.counts_len, dtype=np.int64)
    bucket = (index >> half_magnitude) - 1
    sub = (index & (half - 1)) + half
    first = bucket < 0
    sub[first] -= half
    bucket[first] = 0
    lowest = sub << (bucket + unit)
    size = np.left_shift(np.int64(1), bucket + unit)
    return unit, half_magnitude, sample.sub_bucket_mask, lowest, lowest + size - 1, lowest + (size >> 1)


def _indices(values: np.ndarray) -> np.ndarray:
    """Counts index of each (non-negative, integer) value: HdrHistogram._counts_index_for, vectorised."""
    unit, half_magnitude, mask, _, _, _ = _layout()
    bit_length = np.frexp((values | mask).astype(np.float64))[1].astype(np.int64)  # exact below 2**53
    bucket = bit_length - unit - (half_magnitude + 1)
    sub = values >> (bucket + unit)
    return ((bucket + 1) << half_magnitude) + sub - (1 << half_magnitude)


def _counts(histogram: HdrHistogram) -> np.ndarray:
    return np.ctypeslib.as_array(histogram.counts)


@dataclass(frozen=True)
class Buckets:
    """A histogram's non-empty buckets: their indices and counts, with the smallest and largest value recorded."""

    buckets: np.ndarray
    counts: np.ndarray
    min: int
    max: int

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def of_values(cls, values: np.ndarray) -> "Buckets":
        """Integer values (in range) counted into their buckets."""
        buckets, counts = np.unique(_indices(values), return_counts=True)
        return cls(buckets, counts.astype(np.uint64), int(values.min()), int(values.max()))

    @classmethod
    def of(cls, histogram: HdrHistogram) -> "Buckets":
        counts = _counts(histogram)
        buckets = np.flatnonzero(counts)
        return cls(buckets, counts[buckets].copy(), int(histogram.min_value), int(histogram.max_value))

    @classmethod
    def combined(cls, parts: Sequence["Buckets"]) -> "Buckets":
        """One Buckets holding what all the parts hold."""
        if len(parts) == 1:
            return parts[0]
        buckets, where = np.unique(np.concatenate([p.buckets for p in parts]), return_inverse=True)
        counts = np.zeros(buckets.size, dtype=np.uint64)
        np.add.at(counts, where, np.concatenate([p.counts for p in parts]))
        return cls(buckets, counts, min(p.min for p in parts), max(p.max for p in parts))

    def add_to(self, histogram: HdrHistogram) -> None:
        _counts(histogram)[self.buckets] += self.counts  # a part's buckets are distinct
        histogram.total_count += self.total
        histogram.min_value = min(histogram.min_value, self.min)
        histogram.max_value = max(histogram.max_value, self.max)

    def encode(self) -> list[Any]:
        """[indices, counts, min, max], the arrays as base64 of little-endian integers."""
        return [
            base64.b64encode(self.buckets.astype("<u4").tobytes()).decode("ascii"),
            base64.b64encode(self.counts.astype("<u8").tobytes()).decode("ascii"),
            self.min,
            self.max,
        ]

    @classmethod
    def decode(cls, fields: list[Any]) -> "Buckets":
        """What encode() wrote; ValueError when it is not that."""
        buckets_text, counts_text, smallest, largest = fields
        buckets = np.frombuffer(base64.b64decode(buckets_text, validate=True), dtype="<u4").astype(np.intp)
        counts = np.frombuffer(base64.b64decode(counts_text, validate=True), dtype="<u8").astype(np.uint64)
        if buckets.size != counts.size or not buckets.size or not counts.all():
            raise ValueError("histogram buckets and counts do not pair up")
        # encode() writes them in order: strictly increasing is distinct, and cheaper to see than np.unique.
        if int(buckets[-1]) >= len(_layout()[3]) or not (buckets[1:] > buckets[:-1]).all():
            raise ValueError("histogram buckets out of range, repeated or out of order")
        return cls(buckets, counts, int(smallest), int(largest))


def percentiles_of(counts: np.ndarray, metric: str, percentiles: Sequence[float], nonzero: np.ndarray | None = None) -> np.ndarray:
    """HdrHistogram.get_value_at_percentile for several percentiles of a metric's histogram counts, in natural units.

    Read from the non-empty buckets only: a second, or a whole run, fills a few hundred of
    23,552, and their cumulative sum is what keeps the live view and the report's thousands of
    per-second percentiles cheap. Negated values (level) are read from the other end: the
    p95 of level is the value of the same rank counted from the top of the negated values,
    and the bucket edge that is the upper edge in natural units, as HDR reports it for every
    other metric. `nonzero`: the non-empty buckets' indices, when the caller has them already.
    """
    _, _, _, lowest, highest, _ = _layout()
    if nonzero is None:
        nonzero = np.flatnonzero(counts != 0)  # on a bool array: far quicker than on the uint64 counts
    cumulative = np.cumsum(counts[nonzero], dtype=np.int64)
    total = int(cumulative[-1])
    wanted = np.minimum(np.asarray(percentiles, dtype=float), 100.0)
    ranks = np.maximum((wanted * total / 100 + 0.5).astype(np.int64), 1)
    scale = scale_of(metric)
    if scale < 0:
        index = nonzero[cumulative.searchsorted(total - ranks + 1, side="left")]
        edges = np.where(wanted > 0, lowest[index], highest[index])
    else:
        index = nonzero[cumulative.searchsorted(ranks, side="left")]
        edges = np.where(wanted > 0, highest[index], lowest[index])
    return edges / scale


# --------------------------------------------------------------------------- metrics


class Metrics:
    """What some iterations did: counts and histograms that merge exactly (never averages of percentiles)."""

    def __init__(self, step_kinds: Sequence[str] = ()) -> None:
        self.step_kinds = list(step_kinds)  # step index -> YAML key (expect_prompt, user...), from the scenario
        self.runs: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # reason -> the first message as seen, before normalising
        self.checks: Counter[str] = Counter()
        self.dropped = 0
        self._histograms: dict[str, HdrHistogram] = {}
        self._pending: dict[str, list[float]] = {}  # raw values recorded, not yet in a histogram
        self._parts: dict[str, list[Buckets]] = {}  # decoded or merged buckets, not yet added in
        self._targets: dict[tuple[str, str | None, str], tuple[list[float], ...]] = {}
        self._unflushed = 0

    # ----------------------------------------------------------------- recording

    def record(self, result: Result) -> None:
        """One finished iteration."""
        self.runs[result.outcome.value] += 1
        if result.outcome in (Outcome.failed, Outcome.error):
            self._count_reason(*reason_of(result))
        self._buffer("duration").append(result.duration)
        kinds = self.step_kinds
        targets = self._targets
        passed = failed = 0
        for step in result.steps:
            kind = kinds[step.index] if 0 <= step.index < len(kinds) else None
            key = (step.name, kind, ".duration")
            for values in targets.get(key) or self._targets_for(key):
                values.append(step.duration)
            for measure, value in step.measures.items():
                key = (step.name, kind, measure)
                for values in targets.get(key) or self._targets_for(key):
                    values.append(value)
            for check in step.checks:
                if check.outcome is Outcome.passed or check.outcome is Outcome.degraded:
                    passed += 1
                    self.checks[f"{check.name}:passed"] += 1
                elif check.outcome is not Outcome.skipped:
                    failed += 1
                    self.checks[f"{check.name}:failed"] += 1
        for check in result.checks:
            if check.outcome is Outcome.passed or check.outcome is Outcome.degraded:
                passed += 1
            elif check.outcome is not Outcome.skipped:
                failed += 1
        if passed:
            self.checks["passed"] += passed
        if failed:
            self.checks["failed"] += failed
        self._unflushed += 1
        if self._unflushed >= FLUSH_EVERY:
            self._flush_pending()

    def _targets_for(self, key: tuple[str, str | None, str]) -> tuple[list[float], ...]:
        """The metric lists one step value goes to: the measure itself, per step name and per step kind."""
        name, kind, measure = key
        if measure == ".duration":
            names = [f"step:{name}.duration"] + ([f"step:{kind}.duration"] if kind and kind != name else [])
        else:
            names = [measure, f"step:{name}.{measure}"] + ([f"step:{kind}.{measure}"] if kind and kind != name else [])
        lists = tuple(self._buffer(n) for n in names)
        self._targets[key] = lists
        return lists

    def _buffer(self, metric: str) -> list[float]:
        values = self._pending.get(metric)
        if values is None:
            values = self._pending[metric] = []
        return values

    def _count_reason(self, reason: str, example: str, count: int = 1) -> None:
        if reason not in self.errors and len(self.errors) >= MAX_REASONS:
            reason = OTHER_REASONS
        self.errors[reason] += count
        self.examples.setdefault(reason, example)

    def _flush(self) -> None:
        """Pending values and parts into the histograms."""
        self._flush_pending()
        for metric, parts in self._parts.items():
            histogram = self._histogram(metric)
            for part in parts:
                part.add_to(histogram)
        self._parts.clear()

    def _flush_pending(self) -> None:
        """Pending raw values into parts: scaled, rounded, clamped to the range, counted into buckets.

        Parts, not histograms: a worker's second fills a few hundred of a histogram's 23,552
        buckets, and only a reader needs them all. Every metric in one numpy pass, keyed by
        (metric, bucket): a chat scenario has 26 metrics, and numpy's cost per call, paid
        per metric, was most of a worker's second at low rates.
        """
        self._unflushed = 0
        pending = [(metric, values) for metric, values in self._pending.items() if values]
        if not pending:
            return
        lengths = [len(values) for _, values in pending]
        flat = np.fromiter((value for _, values in pending for value in values), dtype=np.float64, count=sum(lengths))
        flat *= np.repeat([scale_of(metric) for metric, _ in pending], lengths)
        owner = np.repeat(np.arange(len(pending)), lengths)
        for _, values in pending:
            values.clear()  # the same list objects stay: record() holds them in _targets
        kept = ~np.isnan(flat)
        if not kept.all():
            flat, owner = flat[kept], owner[kept]
        if not flat.size:
            return
        # A value past one hour is kept as one hour, a negative one as 0: counted, never dropped.
        units = np.clip(np.rint(flat), 0, HIGHEST).astype(np.int64)
        size = len(_layout()[3])
        keys, counts = np.unique(owner * size + _indices(units), return_counts=True)
        # owner is sorted (each metric's values are contiguous): one slice per metric that kept any.
        present, starts = np.unique(owner, return_index=True)
        smallest = np.minimum.reduceat(units, starts)
        largest = np.maximum.reduceat(units, starts)
        edges = np.searchsorted(keys, np.append(present, len(pending)) * size)
        for i, number in enumerate(present.tolist()):
            part = slice(edges[i], edges[i + 1])
            buckets = Buckets(keys[part] - number * size, counts[part].astype(np.uint64), int(smallest[i]), int(largest[i]))
            self._parts.setdefault(pending[number][0], []).append(buckets)

    def _all_parts(self) -> dict[str, Buckets]:
        """Per metric, everything recorded, as one Buckets (the histograms left as they are)."""
        self._flush_pending()
        everything: dict[str, list[Buckets]] = {m: list(parts) for m, parts in self._parts.items()}
        for metric, histogram in self._histograms.items():
            if histogram.total_count:
                everything.setdefault(metric, []).append(Buckets.of(histogram))
        return {metric: Buckets.combined(parts) for metric, parts in everything.items()}

    def _histogram(self, metric: str) -> HdrHistogram:
        histogram = self._histograms.get(metric)
        if histogram is None:
            histogram = self._histograms[metric] = new_histogram()
        return histogram

    @property
    def histograms(self) -> dict[str, HdrHistogram]:
        """metric name -> histogram (in histogram units; see scale_of)."""
        self._flush()
        return self._histograms

    # ----------------------------------------------------------------- merging and the wire

    def merge(self, other: "Metrics") -> None:
        """Add another Metrics into this one: exact, counters add and histograms add bucket by bucket."""
        if not self.step_kinds:
            self.step_kinds = list(other.step_kinds)
        self.runs.update(other.runs)
        self.checks.update(other.checks)
        self.dropped += other.dropped
        for reason, count in other.errors.items():
            self._count_reason(reason, other.examples.get(reason, reason), count)
        # Parts are taken over as they are: a coordinator merging every worker's second adds them
        # into its totals when it next reads them, and never builds a histogram per delta.
        for metric, part in other._all_parts().items():
            self._parts.setdefault(metric, []).append(part)

    def encode(self) -> bytes:
        """Compact bytes for pipes and Ray: ASCII JSON, each histogram as its non-empty buckets.

        One second of a worker fills a few hundred of a histogram's 23,552 buckets: the
        HdrHistogram V2 format (hdrh's encode) compressed and the reader expanded every one
        of them, which cost the coordinator more than all the rest of its second.
        """
        data = {
            "v": ENCODING,
            "step_kinds": self.step_kinds,
            "runs": dict(self.runs),
            "errors": dict(self.errors),
            "examples": self.examples,
            "checks": dict(self.checks),
            "dropped": self.dropped,
            "histograms": {metric: part.encode() for metric, part in self._all_parts().items()},
        }
        return json.dumps(data, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    @classmethod
    def decode(cls, data: bytes) -> "Metrics":
        """The Metrics encode() wrote; ValueError if the bytes are not that."""
        try:
            fields = json.loads(data)
            if fields["v"] != ENCODING:
                raise ValueError(f"encoding {fields['v']!r}, not {ENCODING}")
            metrics = cls(step_kinds=fields["step_kinds"])
            metrics.runs.update(fields["runs"])
            metrics.errors.update(fields["errors"])
            metrics.examples.update(fields["examples"])
            metrics.checks.update(fields["checks"])
            metrics.dropped = int(fields["dropped"])
            for metric, sparse in fields["histograms"].items():
                metrics._parts[metric] = [Buckets.decode(sparse)]
        except (ValueError, KeyError, TypeError, IndexError, binascii.Error) as exc:
            raise ValueError(f"not encoded Metrics ({type(exc).__name__}: {exc})") from None
        return metrics

    # ----------------------------------------------------------------- reading

    @property
    def finished(self) -> int:
        """Iterations finished, whatever their outcome."""
        return sum(self.runs[o] for o in OUTCOMES)

    def names(self) -> list[str]:
        """Metric names seen, sorted."""
        return sorted(self.histograms)

    def percentiles(self, metric: str, percentiles: Iterable[float]) -> dict[float, float] | None:
        """Several percentiles of one metric in natural units, in one pass; None if it has no data."""
        histogram = self.histograms.get(metric)
        if histogram is None or not histogram.total_count:
            return None
        wanted = list(percentiles)
        return dict(zip(wanted, percentiles_of(_counts(histogram), metric, wanted).tolist()))

    def summary(self, metric: str, percentiles: Sequence[float] = (50.0, 95.0, 99.0)) -> dict[str, float] | None:
        """pNN for each percentile, min, max, avg and count of one metric, from its non-empty buckets; None if no data.

        The live view reads every metric each second (26 in a chat scenario of 9 steps).
        """
        histogram = self.histograms.get(metric)
        if histogram is None or not histogram.total_count:
            return None
        scale = scale_of(metric)
        _, _, _, lowest, highest, middle = _layout()
        counts = _counts(histogram)
        nonzero = np.flatnonzero(counts != 0)
        first, last = nonzero[0], nonzero[-1]
        smallest, largest = (int(lowest[first]), int(highest[last])) if scale > 0 else (-int(highest[last]), -int(lowest[first]))
        figures = dict(zip((f"p{p:g}" for p in percentiles), percentiles_of(counts, metric, percentiles, nonzero).tolist())) if percentiles else {}
        figures["min"], figures["max"] = smallest / abs(scale), largest / abs(scale)
        # Not np.dot: on float64 it wakes OpenBLAS's threads, which then spin (a tenth of a core in the coordinator).
        total = histogram.total_count
        figures["avg"] = float(np.multiply(counts[nonzero], middle[nonzero], dtype=np.float64).sum()) / total / scale
        figures["count"] = float(total)
        return figures

    def stat(self, stat: str, metric: str) -> float | None:
        """p50..p99.9, med, avg, min, max or count of a metric, in natural units (seconds for durations); None if no data.

        count also answers for the counters: count(failed) (or another outcome), count(dropped),
        count(checks), count(iterations). rate is rate().
        """
        if stat == "rate":
            return self.rate(metric)
        if stat == "count":
            return self._count(metric)
        if stat == "med":
            stat = "p50"
        if stat in ("min", "max", "avg"):
            figures = self.summary(metric, ())
            return None if figures is None else figures[stat]
        match = _PERCENTILE.fullmatch(stat)
        if match is None or not 0 <= float(match.group(1)) <= 100:
            raise ValueError(f"unknown stat {stat!r}: use p50..p99.9, med, avg, min, max, count or rate")
        found = self.percentiles(metric, [float(match.group(1))])
        return None if found is None else next(iter(found.values()))

    def _count(self, metric: str) -> float | None:
        if metric in OUTCOMES:
            return float(self.runs[metric])
        if metric == "dropped":
            return float(self.dropped)
        if metric == "checks" or metric.startswith("checks:"):
            prefix = "" if metric == "checks" else metric[len("checks:"):] + ":"
            return float(self.checks[f"{prefix}passed"] + self.checks[f"{prefix}failed"])
        if metric == "iterations":
            return float(self.finished)
        histogram = self.histograms.get(metric)
        return float(histogram.total_count) if histogram is not None and histogram.total_count else None

    def rate(self, what: str) -> float | None:
        """Share of finished runs with that outcome; of checks that passed ("checks"); of iterations dropped ("dropped")."""
        if what in OUTCOMES:
            finished = self.finished
            return self.runs[what] / finished if finished else None
        if what == "checks" or what.startswith("checks:"):
            # "checks:status": the share of the step checks of that name that passed
            prefix = "" if what == "checks" else what[len("checks:"):] + ":"
            passed, failed = self.checks[f"{prefix}passed"], self.checks[f"{prefix}failed"]
            return passed / (passed + failed) if passed + failed else None
        if what == "dropped":
            wanted = self.dropped + self.finished
            return self.dropped / wanted if wanted else None
        raise ValueError(f"unknown rate {what!r}: use {', '.join(RATES)}")

