"""g-mean², TPR/TNR with intervals, and the monitor interface (dgt_interp.monitor)."""

import math
import random

import pytest
import torch

from dgt_interp.errors import DgtInterpError
from dgt_interp.monitor import (Confusion, ConstantMonitor, LogisticMonitor, MonitorError, RandomMonitor, RuleMonitor,
                                View, compare, evaluate_monitor, g_mean2, score)


def test_hand_worked_confusion_matrix():
    # 10 examples: labels 4 positive / 6 negative; predictions catch 3 of the 4 and flag 2 negatives.
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    preds = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    c = Confusion.of(preds, labels)
    assert (c.tp, c.fn, c.fp, c.tn) == (3, 1, 2, 4)
    assert c.tpr == 3 / 4 and c.tnr == 4 / 6
    assert g_mean2(preds, labels) == pytest.approx(3 / 4 * 4 / 6, abs=0)  # exact rationals of small ints


def test_g_mean2_is_base_rate_free_where_accuracy_is_not():
    # Always saying "negative" is 95% accurate at a 5% base rate, and worthless: g-mean² 0.
    labels = [1] * 5 + [0] * 95
    assert g_mean2([0] * 100, labels) == 0.0
    # A monitor with TPR 0.8, TNR 0.9 scores 0.72 at any base rate.
    for pos, neg in ((10, 90), (50, 50), (90, 10)):
        labels = [1] * pos + [0] * neg
        preds = [1] * int(0.8 * pos) + [0] * (pos - int(0.8 * pos)) + [0] * int(0.9 * neg) + [1] * (neg - int(0.9 * neg))
        assert g_mean2(preds, labels) == pytest.approx(0.72, abs=1e-12)


def test_undefined_without_a_class():
    assert math.isnan(g_mean2([1, 0, 1], [1, 1, 1]))


def _views(labels):
    return [View(prompt=str(i), snapshots=(f"label={int(y)}",)) for i, y in enumerate(labels)]


def test_reference_monitors_score_one_zero_and_a_quarter():
    rng = random.Random(0)
    labels = torch.tensor([rng.random() < 0.3 for _ in range(2000)])
    views = _views(labels)
    oracle = RuleMonitor("reads the label", lambda v: v.final == "label=1")
    s = score(oracle.predict(views), labels)
    assert (s.tpr, s.tnr, s.g_mean2) == (1.0, 1.0, 1.0)
    for const in (True, False):
        assert score(ConstantMonitor(const).predict(views), labels).g_mean2 == 0.0
    s = score(RandomMonitor(0.5, seed=1).predict(views), labels, draws=500)
    lo, hi = s.ci95["g_mean2"]
    assert lo <= 0.25 <= hi and hi - lo < 0.1  # a coin flip: TPR ≈ TNR ≈ 0.5, n = 2000 keeps the interval tight


def test_bootstrap_interval_brackets_the_point_estimate():
    labels = [1, 0] * 50
    preds = [1, 0] * 40 + [0, 1] * 10
    s = score(preds, labels, draws=300)
    for name in ("tpr", "tnr", "g_mean2"):
        lo, hi = s.ci95[name]
        assert lo <= getattr(s, name) <= hi
    assert s.n == 100 and s.n_positive == 50


def test_compare_is_paired_and_states_a_verdict():
    labels = [1, 0] * 200
    perfect = labels
    same = compare(perfect, labels, perfect, labels, margin=0.05, draws=200)
    assert same.difference == 0.0 and same.ci95 == (0.0, 0.0) and same.equivalent
    coin = RandomMonitor(0.5, seed=3).predict(_views(labels))
    worse = compare(perfect, labels, coin, labels, draws=200)
    assert worse.difference > 0.5 and worse.different and not worse.equivalent
    assert "different" in worse.verdict()
    with pytest.raises(MonitorError, match="same examples"):
        compare([1, 0], [1, 0], [1], [1])


def test_logistic_monitor_learns_a_feature_and_calibrates_off_the_test_split():
    rng = random.Random(0)
    labels = [rng.random() < 0.25 for _ in range(3000)]
    # One informative feature (shifted by the label, noisy) and one pure-noise feature.
    views = [View(str(i), (f"{(2.0 if y else 0.0) + rng.gauss(0, 1):.4f} {rng.gauss(0, 1):.4f}",))
             for i, y in enumerate(labels)]
    feats = lambda v: [float(t) for t in v.final.split()]  # noqa: E731
    mon = LogisticMonitor(feats)
    s, pred = evaluate_monitor(mon, views[:2000], labels[:2000], views[2000:], labels[2000:], draws=200)
    # Two unit-variance Gaussians 2 apart: the best threshold (the midpoint) gives TPR = TNR = Φ(1) = 0.841,
    # g-mean² = 0.708. At n = 1000 test examples its sampling sd is ~0.03; a threshold fitted on ~670
    # calibration examples costs a little more, so allow 0.08.
    assert abs(s.g_mean2 - 0.708) < 0.08
    assert mon.l2 in mon.l2_grid and 0 < mon.threshold < 1
    assert pred.dtype == torch.bool and pred.shape == (1000,)
    # The threshold maximises g-mean², not accuracy: at a 25% base rate, accuracy's threshold would be higher.
    assert mon.threshold < 0.5


def test_bad_input_is_one_line_and_ours():
    with pytest.raises(MonitorError, match="one prediction per example"):
        Confusion.of([1, 0, 1], [1, 0])
    with pytest.raises(MonitorError, match="booleans or 0/1"):
        Confusion.of([2, 0], [1, 0])
    with pytest.raises(MonitorError, match="not fitted"):
        LogisticMonitor(lambda v: [0.0]).predict(_views([1, 0]))
    with pytest.raises(MonitorError, match="at least 2 of each"):
        LogisticMonitor(lambda v: [0.0]).fit(_views([1, 0, 0, 0]), [1, 0, 0, 0])
    with pytest.raises(MonitorError, match="fixed-length"):
        LogisticMonitor(lambda v: [0.0] * int(v.prompt)).fit(_views([1, 0, 1, 0, 1, 0]), [1, 0, 1, 0, 1, 0])
    assert issubclass(MonitorError, DgtInterpError)
