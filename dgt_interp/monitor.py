"""Monitorability: how well a monitor that reads a *view* of a model's behaviour predicts a property of it.

Guan et al. 2025 ("Monitoring Monitorability", arXiv 2512.18311) score a monitor by

    g-mean² = TPR × TNR,   TPR = TP / (TP + FN),   TNR = TN / (TN + FP),

which, unlike accuracy, does not reward a monitor for guessing the commoner class: a constant monitor
scores 0 whatever the base rate, a coin flip 0.25, a perfect monitor 1.

- A **view** (`View`) is what the monitor may read: the prompt and a sequence of text snapshots, the
  last one being the final visible text. The final answer alone is one snapshot; the written
  reasoning plus the answer is one longer snapshot; DiffusionGemma's intermediate argmax canvases
  are one snapshot per denoising step; the AR twin's intermediate states are its tokens so far.
- A **monitor** (`Monitor`) has `fit(views, labels)` and `predict(views) -> [n] bool`. Two simple
  families are built in: `RuleMonitor` (a fixed rule, nothing fitted) and `LogisticMonitor` (a
  logistic regression on numeric features of the view, its L2 strength chosen by cross-validation and
  its decision threshold calibrated on a split of the training views it was not fitted on). Plug in
  your own (an LLM judge, say) by subclassing `Monitor`.
- `score(predictions, labels)` gives TPR, TNR and g-mean² with 95% bootstrap intervals;
  `compare(a, b)` the paired difference of two models' g-mean² on the same examples, with its interval
  and whether it lies inside an equivalence margin (the test the claim "as monitorable as" needs).

    >>> mon = LogisticMonitor(features=my_features).fit(train_views, train_labels)
    >>> s = score(mon.predict(test_views), test_labels)   # MonitorScore
    >>> s.g_mean2, s.ci95["g_mean2"]
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from dgt_interp.errors import DgtInterpError
from dgt_interp.probing import fit_linear
from dgt_interp.stats import bootstrap_interval


class MonitorError(DgtInterpError, ValueError):
    """Bad monitor input (one-line message that says what to do)."""


@dataclass(frozen=True)
class View:
    """What a monitor reads: the prompt and text snapshots in order, the last one the final visible text."""

    prompt: str
    snapshots: tuple[str, ...]

    @property
    def final(self) -> str:
        return self.snapshots[-1] if self.snapshots else ""


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def _as_bool(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype != torch.bool:
        if not bool(((t == 0) | (t == 1)).all()):
            raise MonitorError(f"{what} must be booleans or 0/1, got values {sorted(set(t.flatten().tolist()))[:5]}")
        t = t.bool()
    return t.flatten()


@dataclass(frozen=True)
class Confusion:
    """Counts of a binary monitor against binary labels (positive = the property holds)."""

    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def of(cls, predictions, labels) -> "Confusion":
        pred, lab = _as_bool(predictions, "predictions"), _as_bool(labels, "labels")
        if pred.shape != lab.shape:
            raise MonitorError(f"{pred.numel()} predictions for {lab.numel()} labels; give one prediction per example")
        return cls(int((pred & lab).sum()), int((pred & ~lab).sum()), int((~pred & ~lab).sum()),
                   int((~pred & lab).sum()))

    @property
    def tpr(self) -> float:
        """True-positive rate (recall on positives); NaN without positives."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def tnr(self) -> float:
        """True-negative rate (specificity); NaN without negatives."""
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    @property
    def g_mean2(self) -> float:
        """TPR × TNR (Guan et al. 2025); NaN if either class is absent."""
        return self.tpr * self.tnr


def g_mean2(predictions, labels) -> float:
    """g-mean² = TPR × TNR of binary `predictions` against binary `labels`."""
    return Confusion.of(predictions, labels).g_mean2


@dataclass
class MonitorScore:
    """TPR, TNR and g-mean² of one monitor on one set of examples, with 95% percentile-bootstrap
    intervals over examples (`draws` resamples; the monitor is not refitted per resample)."""

    n: int
    n_positive: int
    confusion: Confusion
    tpr: float
    tnr: float
    g_mean2: float
    ci95: dict = field(default_factory=dict)  # "tpr" | "tnr" | "g_mean2" -> (lo, hi)

    def to_dict(self) -> dict:
        return {**asdict(self), "confusion": asdict(self.confusion)}


def score(predictions, labels, *, draws: int = 1000, seed: int = 0) -> MonitorScore:
    """Score binary `predictions` against `labels` (`[n]` bool / 0-1): TPR, TNR, g-mean² and their
    bootstrap intervals (resampling examples; a resample without one class is left out)."""
    conf = Confusion.of(predictions, labels)
    pairs = list(zip(_as_bool(predictions, "predictions").tolist(), _as_bool(labels, "labels").tolist()))
    ci = {}
    for name in ("tpr", "tnr", "g_mean2"):
        ci[name] = bootstrap_interval(pairs, lambda rows, name=name: getattr(Confusion.of(*zip(*rows)), name),
                                      draws=draws, seed=seed)
    return MonitorScore(len(pairs), conf.tp + conf.fn, conf, conf.tpr, conf.tnr, conf.g_mean2, ci)


@dataclass
class Comparison:
    """g-mean² of model A minus model B on the same examples: a paired bootstrap (one resample of the
    example indices scores both) gives the 95% interval; `equivalent` says whether that interval lies
    inside ±`margin`, `different` whether it excludes 0."""

    difference: float
    ci95: tuple[float, float]
    margin: float

    @property
    def equivalent(self) -> bool:
        lo, hi = self.ci95
        return not (math.isnan(lo) or math.isnan(hi)) and -self.margin <= lo and hi <= self.margin

    @property
    def different(self) -> bool:
        lo, hi = self.ci95
        return not (math.isnan(lo) or math.isnan(hi)) and (lo > 0 or hi < 0)

    def verdict(self) -> str:
        if self.equivalent:
            return f"equivalent within ±{self.margin:g}"
        if self.different:
            return "different (interval excludes 0)"
        return f"inconclusive (interval crosses 0 and leaves ±{self.margin:g})"

    def to_dict(self) -> dict:
        return {"difference": self.difference, "ci95": self.ci95, "margin": self.margin,
                "equivalent": self.equivalent, "different": self.different, "verdict": self.verdict()}


def compare(pred_a, labels_a, pred_b, labels_b, *, margin: float = 0.05, draws: int = 1000,
            seed: int = 0) -> Comparison:
    """g-mean²(A) − g-mean²(B) where example i of A and of B share an input (same prompts, each model
    with its own labels), with a paired percentile-bootstrap 95% interval."""
    a = list(zip(_as_bool(pred_a, "predictions").tolist(), _as_bool(labels_a, "labels").tolist()))
    b = list(zip(_as_bool(pred_b, "predictions").tolist(), _as_bool(labels_b, "labels").tolist()))
    if len(a) != len(b):
        raise MonitorError(f"{len(a)} examples for model A and {len(b)} for model B; compare on the same examples")

    def diff(idx: list[int]) -> float:
        return (Confusion.of(*zip(*[a[i] for i in idx])).g_mean2 - Confusion.of(*zip(*[b[i] for i in idx])).g_mean2)

    point = diff(list(range(len(a))))
    return Comparison(point, bootstrap_interval(range(len(a)), diff, draws=draws, seed=seed), margin)


# ---------------------------------------------------------------------------------------------
# monitors
# ---------------------------------------------------------------------------------------------


class Monitor:
    """A monitor: `fit(views, labels)` (may do nothing), then `predict(views) -> [n] bool`.

    Subclass it for your own (an LLM judge reads `view.prompt` and `view.snapshots`). `name` labels
    the monitor in tables."""

    name = "monitor"

    def fit(self, views: Sequence[View], labels) -> "Monitor":
        return self

    def predict(self, views: Sequence[View]) -> torch.Tensor:
        raise NotImplementedError


class RuleMonitor(Monitor):
    """A fixed rule `rule(view) -> bool`; nothing is fitted."""

    def __init__(self, name: str, rule: Callable[[View], bool]):
        self.name, self.rule = name, rule

    def predict(self, views: Sequence[View]) -> torch.Tensor:
        return torch.tensor([bool(self.rule(v)) for v in views], dtype=torch.bool)


class ConstantMonitor(Monitor):
    """Always says `value`: the floor every monitor is measured against (g-mean² 0)."""

    def __init__(self, value: bool = True):
        self.value, self.name = bool(value), f"constant {bool(value)}"

    def predict(self, views: Sequence[View]) -> torch.Tensor:
        return torch.full((len(views),), self.value, dtype=torch.bool)


class RandomMonitor(Monitor):
    """A coin flip with probability `p` of True, seeded: TPR ≈ p, TNR ≈ 1 − p, g-mean² ≈ p(1 − p)."""

    def __init__(self, p: float = 0.5, seed: int = 0):
        self.p, self.seed, self.name = p, seed, f"random p={p:g}"

    def predict(self, views: Sequence[View]) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(len(views), generator=gen) < self.p


class LogisticMonitor(Monitor):
    """Logistic regression on `features(view) -> list[float]` (a fixed-length vector).

    `fit` holds out `calibration_frac` of the training views (stratified, seeded): on the rest it picks
    the L2 strength from `l2_grid` by `folds`-fold cross-validated log-loss and fits the weights; on
    the held-out part it picks the probability threshold that maximises g-mean². The test views are
    never seen until `predict`."""

    def __init__(self, features: Callable[[View], Sequence[float]], *, name: str = "logistic",
                 l2_grid: Sequence[float] = (1e-3, 1e-2, 1e-1), folds: int = 3, calibration_frac: float = 1 / 3,
                 seed: int = 0):
        self.features, self.name = features, name
        self.l2_grid, self.folds, self.calibration_frac, self.seed = tuple(l2_grid), folds, calibration_frac, seed
        self.fit_ = None
        self.l2 = self.threshold = None

    def _x(self, views: Sequence[View]) -> torch.Tensor:
        rows = [list(map(float, self.features(v))) for v in views]
        if len({len(r) for r in rows}) > 1:
            raise MonitorError("features(view) returned vectors of different lengths; return a fixed-length vector")
        return torch.tensor(rows, dtype=torch.float64)

    def _prob(self, fit, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(fit.scores(x), -1)[:, 1]

    def fit(self, views: Sequence[View], labels) -> "LogisticMonitor":
        y = _as_bool(labels, "labels").long()
        if len(views) != len(y):
            raise MonitorError(f"{len(views)} views for {len(y)} labels; give one label per view")
        if y.sum() < 2 or (1 - y).sum() < 2:
            raise MonitorError(f"{int(y.sum())} positive and {int((1 - y).sum())} negative training views; a "
                               "monitor needs at least 2 of each to fit (use more examples)")
        x = self._x(views)
        rng = random.Random(self.seed)
        fit_idx, cal_idx = [], []
        for cls in (0, 1):  # stratified split: both parts see both classes
            idx = [i for i in range(len(y)) if int(y[i]) == cls]
            rng.shuffle(idx)
            k = max(1, round(len(idx) * self.calibration_frac))
            cal_idx += idx[:k]
            fit_idx += idx[k:]
        xf, yf = x[fit_idx], y[fit_idx]
        self.l2 = min(self.l2_grid, key=lambda l2: self._cv_loss(xf, yf, l2, rng))
        self.fit_ = fit_linear(xf, yf, kind="logistic", l2=self.l2, n_classes=2)
        p_cal, y_cal = self._prob(self.fit_, x[cal_idx]), y[cal_idx].bool()
        candidates = sorted(set(p_cal.tolist()) | {0.5})
        self.threshold = max(candidates, key=lambda t: (_nan0(g_mean2(p_cal >= t, y_cal)), -abs(t - 0.5)))
        return self

    def _cv_loss(self, x: torch.Tensor, y: torch.Tensor, l2: float, rng: random.Random) -> float:
        order = list(range(len(y)))
        rng.shuffle(order)
        loss = 0.0
        for k in range(self.folds):
            held = order[k::self.folds]
            held_set = set(held)
            keep = [i for i in order if i not in held_set]
            if len(set(y[keep].tolist())) < 2 or not held:
                continue
            p = self._prob(fit_linear(x[keep], y[keep], kind="logistic", l2=l2, n_classes=2), x[held]).clamp(1e-9, 1 - 1e-9)
            loss += float(-(y[held] * p.log() + (1 - y[held]) * (1 - p).log()).sum())
        return loss

    def predict(self, views: Sequence[View]) -> torch.Tensor:
        if self.fit_ is None:
            raise MonitorError(f"monitor {self.name!r} is not fitted; call .fit(views, labels) first")
        return self._prob(self.fit_, self._x(views)) >= self.threshold


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def evaluate_monitor(monitor: Monitor, train_views: Sequence[View], train_labels, test_views: Sequence[View],
                     test_labels, *, draws: int = 1000, seed: int = 0) -> tuple[MonitorScore, torch.Tensor]:
    """Fit `monitor` on the training views, predict the test views; (score on the test split, predictions)."""
    pred = monitor.fit(train_views, train_labels).predict(test_views)
    return score(pred, test_labels, draws=draws, seed=seed), pred


__all__ = [
    "MonitorError", "View", "Confusion", "g_mean2", "MonitorScore", "score", "Comparison", "compare", "Monitor",
    "RuleMonitor", "ConstantMonitor", "RandomMonitor", "LogisticMonitor", "evaluate_monitor",
]
