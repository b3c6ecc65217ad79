"""How sure a quality number is: a 95 % interval on a metric, a paired comparison of a variant with the fp32 baseline
on the same items, and the verdict on whether the variant is within its tolerance.

Everything works from a Score's per-item statistics (`Score.items`) and the metric's `aggregate`, so one bootstrap
serves every metric: accuracy's 0/1 column, perplexity's (NLL, tokens) per window, BLEU's n-gram counts per segment.
Resampling is seeded: the same items give the same interval and p-value on every machine.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from . import Metric, Tolerance

RESAMPLES = 2000
SIGNIFICANCE = 0.05
# Two one-sided tests at 5 % each: equivalence within ±t is shown when the 90 % interval lies inside it.
TOST_CONFIDENCE = 1 - 2 * SIGNIFICANCE
CHUNK_VALUES = 1 << 22  # floats gathered per block of resamples (32 MB): a BLEU stack of 2,000 x 3,003 x 10 is 480 MB


def mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar test: the discordant pairs (b one way, c the other) under a fair coin."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n) if n else 1.0


def _items(metric: Metric, items, what: str = "items") -> np.ndarray:
    if metric.aggregate is None:
        raise InputError(f"metric {metric.name} has no aggregate: its items cannot be resampled")
    items = np.atleast_1d(np.asarray(items, dtype=np.float64))
    if len(items) == 0:
        raise InputError(f"metric {metric.name}: no {what} to compare or put an interval on")
    return items.reshape(len(items), -1)


def _aggregate(metric: Metric, stack: np.ndarray) -> np.ndarray:
    """The metric's value for each resample in a stack (r, n, k). Built-in aggregates take the whole stack; one that
    returns a single number for it is called once per resample instead."""
    values = np.asarray(metric.aggregate(stack), dtype=np.float64)
    if values.shape != stack.shape[:1]:
        values = np.array([float(metric.aggregate(one)) for one in stack])
    return values


def _resampled(metric: Metric, arrays: list[np.ndarray], seed: int, resamples: int) -> Iterator[list[np.ndarray]]:
    """The metric's values on `resamples` bootstrap resamples of the items, the same resampled indices for every
    array (that is what pairs them), in blocks that bound memory."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    block = max(1, CHUNK_VALUES // max(1, n * max(a.shape[1] for a in arrays)))
    for start in range(0, resamples, block):
        index = rng.integers(0, n, size=(min(block, resamples - start), n))
        yield [_aggregate(metric, a[index]) for a in arrays]


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    with np.errstate(invalid="ignore"):
        low, high = np.nanpercentile(values, [tail, 100 - tail]) if np.isfinite(values).any() else (math.nan,) * 2
    return float(low), float(high)


def interval(metric: Metric, items, confidence: float = 0.95, seed: int = 0,
             resamples: int = RESAMPLES) -> tuple[float, float]:
    """The `confidence` interval of the metric's value: the Wilson score interval for a binary metric (sound near 0
    and 100 %, where the normal approximation collapses to a point), a seeded percentile bootstrap otherwise."""
    items = _items(metric, items)
    if metric.binary:
        n, hits = len(items), float(items[:, 0].sum())
        z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
        p = hits / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return max(0.0, centre - half), min(1.0, centre + half)
    values = np.concatenate([v for v, in _resampled(metric, [items], seed, resamples)])
    return _percentiles(values, confidence)


@dataclass(frozen=True)
class Paired:
    delta: float  # variant - fp32, in the metric's own units
    low: float  # 95 % interval of delta (paired bootstrap over the same items)
    high: float
    p: float  # exact McNemar for a binary metric; paired-bootstrap two-sided p otherwise
    test: str  # e.g. "exact McNemar, 4 lost vs 9 gained" / "paired bootstrap, 2000 resamples"
    n: int
    # The 90 % interval of delta that the equivalence test (TOST) reads; None: low..high (an older record)
    tost_low: float | None = None
    tost_high: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def paired(metric: Metric, items, base_items, seed: int = 0, resamples: int = RESAMPLES) -> Paired:
    """The variant against fp32 item by item: `items[i]` and `base_items[i]` must be the same example."""
    items, base = _items(metric, items), _items(metric, base_items, "fp32 items")
    if items.shape != base.shape:
        raise InputError(f"metric {metric.name}: the variant has {items.shape[0]} items of {items.shape[1]} values but "
                         f"fp32 has {base.shape[0]} of {base.shape[1]}; a paired test needs the same items")
    delta = float(metric.aggregate(items)) - float(metric.aggregate(base))
    deltas = np.concatenate([v - b for v, b in _resampled(metric, [items, base], seed, resamples)])
    low, high = _percentiles(deltas, 0.95)
    if metric.binary:
        right, base_right = items[:, 0] > 0.5, base[:, 0] > 0.5
        lost, gained = int((base_right & ~right).sum()), int((right & ~base_right).sum())
        return Paired(delta, low, high, mcnemar(lost, gained), f"exact McNemar, {lost} lost vs {gained} gained",
                      len(items), *paired_proportions(lost, gained, len(items)))
    # Two-sided: how often a resampled delta lies as far from the observed one as zero does (the bootstrap
    # distribution shifted to the null); +1 on both sides so a finite number of resamples never claims p = 0.
    finite = deltas[np.isfinite(deltas)]
    extreme = int((np.abs(finite - delta) >= abs(delta)).sum())
    p = min(1.0, (extreme + 1) / (len(finite) + 1))
    return Paired(delta, low, high, p, f"paired bootstrap, {resamples} resamples", len(items),
                  *_percentiles(deltas, TOST_CONFIDENCE))


def paired_proportions(lost: int, gained: int, n: int, confidence: float = TOST_CONFIDENCE) -> tuple[float, float]:
    """Interval of the difference of two paired proportions (variant - fp32): Agresti and Min's (2005) adjusted Wald
    interval, half an item added to each cell of the paired table. A bootstrap of a binary difference collapses to
    0..0 when no item changed, as if 64 identical answers proved the loss to be nil; this interval does not."""
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    g, lo, m = gained + 0.5, lost + 0.5, n + 2
    centre = (g - lo) / m
    half = z * math.sqrt(max(0.0, (g + lo) - (g - lo) ** 2 / m)) / m
    return centre - half, centre + half


@dataclass(frozen=True)
class Verdict:
    qualifies: bool
    phrase: str  # short: it goes into a one-line recommendation

    def to_dict(self) -> dict:
        return asdict(self)


def _signed(x: float) -> str:
    text = f"{x:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _amount(metric: Metric, x: float) -> str:
    """A difference in the metric's units: points for a 0..1 or x100 metric, the plain number otherwise."""
    if metric.scale in ("unit", "points"):
        return _signed(x * (100 if metric.scale == "unit" else 1))
    return "0" if x == 0 else f"{x:+.3g}"


def _unit(metric: Metric, tolerance: Tolerance, *values: float) -> str:
    if metric.scale in ("unit", "points"):
        scale = 100 if metric.scale == "unit" else 1
        return " point" if all(round(abs(v) * scale, 1) <= 1 for v in values) else " points"
    if tolerance.kind == "absolute" and tolerance.unit not in ("unit", "points"):
        return f" {tolerance.unit}"
    return ""


def _tolerance_text(metric: Metric, tolerance: Tolerance) -> str:
    if tolerance.kind == "relative":
        return f"{100 * tolerance.amount:g} %"
    if metric.scale in ("unit", "points"):
        points = tolerance.amount * (100 if metric.scale == "unit" else 1)
        return f"{points:g} point{'s' * (points != 1)}"
    unit = f" {tolerance.unit}" if tolerance.unit not in ("unit", "points", "") else ""
    return f"{tolerance.amount:g}{unit}"


def judge(metric: Metric, value: float, fp32_value: float, pair: Paired | None,
          tolerance: Tolerance | None = None) -> Verdict:
    """Whether a variant's quality is within tolerance of fp32: an equivalence test on the paired difference.

    gain is the delta signed so that positive is better (flipped for a lower-is-better metric); t is the tolerance
    in the metric's units (relative: amount x |fp32 value|). Two one-sided tests at 5 % each (TOST), read from the
    pair's 90 % interval of the difference:
    - the whole interval above 0: "better" (qualifies);
    - the whole interval inside ±t: "equivalent within t" (qualifies);
    - the interval above -t and reaching past +t: "no worse by more than t" (qualifies);
    - the whole interval below -t: "worse by more than t";
    - otherwise the interval straddles -t: "not enough data to tell".
    More items give a narrower interval, so for a given difference the verdict can only move from "not enough data"
    to a decision as the sample grows: it never calls a larger sample worse than a smaller one.
    floor: qualifies iff value >= amount. Without a pair (no per-item data) the point value decides, gain >= -t,
    and the phrase says so.
    """
    tolerance = tolerance or metric.tolerance
    if tolerance.kind == "floor":
        ok = value >= tolerance.amount
        return Verdict(ok, f"{'meets' if ok else 'below'} the floor ({value:.4g} {'>=' if ok else '<'} "
                           f"{tolerance.amount:g})")
    if tolerance.kind not in ("absolute", "relative"):
        raise InputError(f"tolerance kind {tolerance.kind!r}: choose absolute, relative or floor")
    t = tolerance.amount * (abs(fp32_value) if tolerance.kind == "relative" else 1.0)
    sign = 1.0 if metric.higher_is_better else -1.0
    delta = pair.delta if pair else value - fp32_value
    within = _tolerance_text(metric, tolerance)

    def show(*xs: float) -> str:  # differences as delta (variant - fp32): a % of fp32 for a relative tolerance
        if tolerance.kind == "relative" and fp32_value:
            return "..".join(_signed(100 * x / abs(fp32_value)) for x in xs) + " %"
        return "..".join(_amount(metric, x) for x in xs) + _unit(metric, tolerance, *xs)

    if pair is None:
        ok = sign * delta >= -t
        return Verdict(ok, f"{'within tolerance' if ok else 'loss beyond tolerance'}: {show(delta)} "
                           "(point value only, no per-item data)")
    low = pair.low if pair.tost_low is None else pair.tost_low
    high = pair.high if pair.tost_high is None else pair.tost_high
    gain_low, gain_high = sorted((sign * low, sign * high))
    interval_text = f"90 % interval {show(low, high)}"
    if gain_low > 0:
        return Verdict(True, f"better ({interval_text})")
    if gain_low >= -t and gain_high <= t:
        return Verdict(True, f"equivalent within {within} ({interval_text})")
    if gain_low >= -t:
        return Verdict(True, f"no worse by more than {within} ({interval_text})")
    if gain_high < -t:
        return Verdict(False, f"worse by more than {within} ({interval_text})")
    return Verdict(False, f"not enough data to tell within {within} ({interval_text}, {pair.n} items)")
