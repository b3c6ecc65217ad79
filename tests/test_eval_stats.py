"""Intervals, paired comparisons and verdicts on per-item statistics (evaluation/stats.py): no model, fast."""
import math
import time

import numpy as np
import pytest

from qdeploy import evaluation
from qdeploy.errors import InputError
from qdeploy.evaluation import Score, Tolerance, stats


def _binary(n: int, right: int) -> np.ndarray:
    return np.array([1.0] * right + [0.0] * (n - right))[:, None]


def test_mcnemar_is_the_exact_two_sided_binomial_test():
    assert stats.mcnemar(5, 4) == 1.0
    assert stats.mcnemar(0, 0) == 1.0
    assert stats.mcnemar(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar(1, 10) == pytest.approx(2 * (1 + 11) / 2 ** 11)
    assert stats.mcnemar(3, 9) == stats.mcnemar(9, 3)
    assert stats.mcnemar(2000, 2100) < 0.2  # large counts stay exact integers, no overflow


def test_wilson_interval_for_a_binary_metric():
    accuracy = evaluation.metric("accuracy")
    low, high = stats.interval(accuracy, _binary(872, 773))
    # Wilson score interval of 773/872 at 95 % (z = 1.95996)
    assert (low, high) == pytest.approx((0.8636, 0.9063), abs=5e-4)
    assert low < 773 / 872 < high
    assert stats.interval(accuracy, _binary(50, 50)) == pytest.approx((0.9287, 1.0), abs=5e-4)  # not (1, 1)
    assert stats.interval(accuracy, _binary(50, 0))[0] == 0.0


def test_bootstrap_interval_is_seeded_and_contains_the_value():
    rouge = evaluation.metric("rouge")
    items = np.random.default_rng(1).uniform(20, 60, size=(300, 1))
    first = stats.interval(rouge, items)
    assert first == stats.interval(rouge, items)  # same seed, same interval
    assert first != stats.interval(rouge, items, seed=1)
    assert first[0] < items.mean() < first[1]
    # close to the normal approximation for a mean of 300 values
    half = 1.96 * items.std(ddof=1) / math.sqrt(len(items))
    assert first == pytest.approx((items.mean() - half, items.mean() + half), abs=0.4)


def test_every_aggregate_reproduces_its_value_from_a_stack():
    """Each built-in aggregate gives one value for (n, k) items and one per resample for a stack (r, n, k)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    samples = {
        "accuracy": (rng.random(200) < 0.8).astype(float)[:, None],
        "stsb": np.stack([x, np.round(x + rng.normal(size=200), 1)], axis=1),
        "perplexity": np.stack([rng.uniform(50, 100, 200), rng.integers(40, 80, 200)], axis=1).astype(float),
        "kl": np.stack([rng.uniform(0, 1, 200), rng.integers(5, 30, 200)], axis=1).astype(float),
        "token-agreement": np.stack([np.full(200, 10.0), np.full(200, 12.0)], axis=1),
    }
    for name, items in samples.items():
        metric = evaluation.metric(name)
        value = float(metric.aggregate(items))
        stack = np.stack([items, items[::-1], items[rng.integers(0, 200, 200)]])
        values = metric.aggregate(stack)
        assert values.shape == (3,), name
        assert values[:2] == pytest.approx([value, value], rel=1e-12), name
    from scipy.stats import spearmanr

    stsb = samples["stsb"]
    assert evaluation.metric("stsb").aggregate(stsb) == pytest.approx(100 * spearmanr(stsb[:, 0], stsb[:, 1]).statistic,
                                                                      rel=1e-12)
    perplexity = samples["perplexity"]
    assert evaluation.metric("perplexity").aggregate(perplexity) == pytest.approx(
        math.exp(perplexity[:, 0].sum() / perplexity[:, 1].sum()))


def test_bleu_and_chrf_items_reproduce_sacrebleu_corpus_scores():
    sacrebleu = pytest.importorskip("sacrebleu")
    from qdeploy.evaluation.seq2seq_metrics import _scorer

    refs = ["the cat sat on the mat .", "a quick brown fox jumps over the dog", "hello world", "it rains today"]
    hyps = ["the cat sat on a mat .", "a fast brown fox jumped over the dog", "", "it is raining today"]
    for name, corpus in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf)):
        metric = evaluation.metric(name)
        items = np.array(_scorer(name)._extract_corpus_statistics(hyps, [refs]), dtype=np.float64)
        assert metric.aggregate(items) == corpus(hyps, [refs]).score  # exactly: sums of integer counts
        assert metric.aggregate(np.stack([items, items])).tolist() == [corpus(hyps, [refs]).score] * 2


def test_paired_binary_uses_exact_mcnemar_on_the_discordant_items():
    accuracy = evaluation.metric("accuracy")
    base = _binary(100, 80)
    variant = base.copy()
    variant[:9] = 0.0  # 9 lost
    variant[80:84] = 1.0  # 4 gained
    pair = stats.paired(accuracy, variant, base)
    assert pair.delta == pytest.approx(-0.05)
    assert pair.p == stats.mcnemar(9, 4)
    assert pair.test == "exact McNemar, 9 lost vs 4 gained" and pair.n == 100
    assert pair.low < pair.delta < pair.high
    assert pair.to_dict()["test"] == pair.test
    assert stats.paired(accuracy, base, base).p == 1.0


def test_paired_bootstrap_detects_a_consistent_shift_and_ignores_noise():
    rouge = evaluation.metric("rouge")
    rng = np.random.default_rng(2)
    base = rng.uniform(20, 60, size=(400, 1))
    shifted = stats.paired(rouge, base - 1.0 + rng.normal(0, 0.3, size=base.shape), base)
    assert shifted.p < 0.01 and shifted.high < 0 and shifted.test == "paired bootstrap, 2000 resamples"
    noise = stats.paired(rouge, base + rng.normal(0, 3.0, size=base.shape), base)
    assert noise.p > 0.05 and noise.low < 0 < noise.high
    same = stats.paired(rouge, base, base)
    assert (same.delta, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)


def test_paired_refuses_different_items():
    with pytest.raises(InputError, match="variant has 5 items .* fp32 has 6"):
        stats.paired(evaluation.metric("accuracy"), _binary(5, 3), _binary(6, 3))
    with pytest.raises(InputError, match="no items"):
        stats.interval(evaluation.metric("rouge"), np.zeros((0, 1)))


def _pair(delta, low, high, p=0.5, n=100):
    """A pair whose 90 % interval (the one the equivalence test reads) is low..high."""
    return stats.Paired(delta, low, high, p, "test", n, low, high)


def test_judge_is_an_equivalence_test():
    accuracy = evaluation.metric("accuracy")  # absolute 0.01
    verdict = stats.judge(accuracy, 0.884, 0.886, _pair(-0.002, -0.006, 0.004))
    assert verdict.qualifies and verdict.phrase == "equivalent within 1 point (90 % interval -0.6..+0.4 point)"
    # the interval reaches past a point of loss: whatever the point value or a p-value says, it cannot be told
    verdict = stats.judge(accuracy, 0.88, 0.886, _pair(-0.006, -0.02, 0.008, p=0.81))
    assert not verdict.qualifies
    assert verdict.phrase == "not enough data to tell within 1 point (90 % interval -2.0..+0.8 points, 100 items)"
    verdict = stats.judge(accuracy, 0.854, 0.886, _pair(-0.032, -0.045, -0.02, p=0.001))
    assert not verdict.qualifies and verdict.phrase == "worse by more than 1 point (90 % interval -4.5..-2.0 points)"
    verdict = stats.judge(accuracy, 0.894, 0.886, _pair(0.008, 0.001, 0.015))
    assert verdict.qualifies and verdict.phrase == "better (90 % interval +0.1..+1.5 points)"
    verdict = stats.judge(accuracy, 0.89, 0.886, _pair(0.004, -0.008, 0.015))
    assert verdict.qualifies and verdict.phrase.startswith("no worse by more than 1 point")
    assert verdict.to_dict() == {"qualifies": True, "phrase": verdict.phrase}


@pytest.mark.parametrize("lost_per_thousand", [8, 15])
def test_the_verdict_never_gets_worse_with_more_items(lost_per_thousand):
    """The same loss measured on 10x and 100x the items: the old rule (a point loss within tolerance and not
    significant qualifies) passed 2 lost in 250 and failed 20 lost in 2,500. The equivalence test may only move from
    "not enough data" to a decision."""
    accuracy = evaluation.metric("accuracy")
    verdicts = []
    for n in (250, 2500, 25000):
        lost = lost_per_thousand * n // 1000
        base, variant = _binary(n, n), _binary(n, n - lost)
        pair = stats.paired(accuracy, variant, base, resamples=200)
        verdicts.append(stats.judge(accuracy, float(variant.mean()), 1.0, pair))
    qualifies = [v.qualifies for v in verdicts]
    assert qualifies == sorted(qualifies), [v.phrase for v in verdicts]
    assert verdicts[0].phrase.startswith("not enough data to tell")
    final = "equivalent within 1 point" if lost_per_thousand < 10 else "worse by more than 1 point"
    assert verdicts[-1].phrase.startswith(final), verdicts[-1].phrase


def test_no_change_in_few_items_is_not_proof_of_equivalence():
    """64 identical answers: a bootstrap interval of the difference collapses to 0..0; the paired-proportions
    interval used for a binary metric still spans more than a point, so the verdict is "not enough data"."""
    accuracy = evaluation.metric("accuracy")
    same = stats.paired(accuracy, _binary(64, 60), _binary(64, 60), resamples=200)
    assert (same.low, same.high) == (0.0, 0.0)
    assert same.tost_low < -0.01 and same.tost_high > 0.01
    assert stats.judge(accuracy, 0.9375, 0.9375, same).phrase.startswith("not enough data to tell")
    many = stats.paired(accuracy, _binary(3000, 2700), _binary(3000, 2700), resamples=200)
    assert stats.judge(accuracy, 0.9, 0.9, many).phrase.startswith("equivalent within 1 point")


def test_judge_for_lower_is_better_relative_floor_and_no_pair():
    perplexity = evaluation.metric("perplexity")  # relative 2 %, lower is better
    # +1 % perplexity, interval +0.5..+1.5 %: a loss, but within 2 %
    verdict = stats.judge(perplexity, 10.1, 10.0, _pair(0.1, 0.05, 0.15, 0.001))
    assert verdict.qualifies and verdict.phrase == "equivalent within 2 % (90 % interval +0.5..+1.5 %)"
    # falling perplexity is a gain
    verdict = stats.judge(perplexity, 9.9, 10.0, _pair(-0.1, -0.15, -0.05, 0.001))
    assert verdict.phrase == "better (90 % interval -1.5..-0.5 %)"
    verdict = stats.judge(perplexity, 10.4, 10.0, _pair(0.4, 0.3, 0.5, 0.0005))
    assert not verdict.qualifies and verdict.phrase == "worse by more than 2 % (90 % interval +3.0..+5.0 %)"
    stsb = evaluation.metric("stsb")  # points already: absolute 1.0
    assert stats.judge(stsb, 81.5, 82.0, _pair(-0.5, -0.9, -0.1, 0.01)).phrase == \
        "equivalent within 1 point (90 % interval -0.9..-0.1 point)"
    kl = evaluation.metric("kl")
    assert "nats" in stats.judge(kl, 0.3, 0.0, _pair(0.3, 0.25, 0.35, 0.001)).phrase
    cosine = evaluation.metric("cosine")  # floor 0.99, whatever the pair says
    assert stats.judge(cosine, 0.995, 1.0, None).qualifies
    verdict = stats.judge(cosine, 0.985, 1.0, _pair(-0.015, -0.02, -0.01, 0.001))
    assert not verdict.qualifies and verdict.phrase == "below the floor (0.985 < 0.99)"
    # no per-item data: the point value decides, and the phrase says so
    verdict = stats.judge(evaluation.metric("accuracy"), 0.88, 0.886, None)
    assert verdict.qualifies and "point value only" in verdict.phrase
    assert not stats.judge(evaluation.metric("accuracy"), 0.87, 0.886, None).qualifies
    # an explicit tolerance overrides the metric's
    strict = Tolerance("absolute", 0.001)
    assert not stats.judge(evaluation.metric("accuracy"), 0.884, 0.886, _pair(-0.002, -0.006, 0.004, 0.01),
                           strict).qualifies


def test_tolerances_of_the_metrics():
    described = {name: evaluation.metric(name).tolerance.describe() for name in (
        "accuracy", "agreement", "lastword", "choice", "choice-norm", "token-agreement", "seq2seq-agreement", "stsb",
        "perplexity", "cosine", "bleu", "chrf", "rouge", "kl")}
    assert described == {**{name: "1 point" for name in described}, "perplexity": "2 % relative",
                         "cosine": ">= 0.99", "kl": "0.05 nats", "token-agreement": ">= 0.9"}
    assert evaluation.metric("accuracy").tolerance == Tolerance("absolute", 0.01, "unit")
    assert Tolerance("absolute", 0.5).describe() == "0.5"  # no unit given: the bare number in the metric's units
    assert Tolerance("absolute", 0.005, "unit").describe() == "0.5 point"
    assert evaluation.metric("stsb").tolerance.amount == 1.0
    binary = {name for name in evaluation.names() if evaluation.metric(name).binary}
    assert binary == {"accuracy", "agreement", "lastword", "choice", "choice-norm"}
    assert all(evaluation.metric(name).aggregate is not None for name in evaluation.names())
    assert Score(0.5).items is None and Score(0.5).raw is None


def test_bootstrap_stays_fast_on_the_slowest_aggregates():
    """Spearman (ranks per resample) on 1,379 STS pairs and BLEU on 3,003 segments: 2,000 resamples each."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=1379)
    sts = np.stack([x, np.round(x + rng.normal(size=1379), 1)], axis=1)
    bleu = rng.integers(0, 30, size=(3003, 10)).astype(float)
    bleu[:, 6:] += bleu[:, 2:6]  # totals >= matches
    for name, items in (("stsb", sts), ("bleu", bleu)):
        if name == "bleu":
            pytest.importorskip("sacrebleu")
        t0 = time.perf_counter()
        stats.paired(evaluation.metric(name), items + rng.normal(0, 0.01, size=items.shape) * (name == "stsb"), items)
        assert time.perf_counter() - t0 < 6.0, name  # about 1 s on a busy 2-core machine; twice the interval's work
