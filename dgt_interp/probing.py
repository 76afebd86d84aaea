"""Linear probes over (step, layer) of a recorded run, with a held-out split and a control task.

`linear_probe(traj, labels, position=...)` fits one probe per (recorded step, layer) on the residual
stream at one canvas position per prompt (`[R, layer, B, d]` from `traj.stack(name)`), scores it on
prompts it did not see, and reports selectivity (Hewitt & Liang 2019, "Designing and Interpreting
Probes with Control Tasks"): the same probe fitted to a *control task* (each input type, e.g. the
operand digits of a column, gets a random label with the real labels' frequencies, so only
memorising types can solve it) and `selectivity = accuracy - control accuracy`. A probe that decodes
the variable, not the types, is accurate and selective.

Probes: "logistic" (multinomial logistic regression, L2, fitted with L-BFGS on standardised
features) or "ridge" (ridge regression onto one-hot labels, argmax; closed form).

    >>> res = linear_probe(traj, carry_labels, position=2, types=column_digits)
    >>> res.accuracy        # [step, layer] held-out accuracy
    >>> res.selectivity     # [step, layer] accuracy - control accuracy
    >>> res.figure()
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from dgt_interp.errors import DgtInterpError

KINDS = ("logistic", "ridge")


class ProbeError(DgtInterpError, ValueError):
    """Bad probe input (one-line message that says what to do)."""


def split(n: int, train_frac: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices): a seeded random split of `n` examples."""
    if not 0 < train_frac < 1:
        raise ProbeError(f"train_frac={train_frac!r} must be between 0 and 1")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * train_frac))
    if k < 2 or n - k < 1:
        raise ProbeError(f"{n} examples are too few for a held-out split at train_frac={train_frac}; use more prompts")
    return perm[:k], perm[k:]


def control_labels(types, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Hewitt & Liang's control task: each distinct type (any hashable per example) gets one random label,
    drawn from the real labels' empirical distribution. `[n]` long."""
    types = [t.item() if isinstance(t, torch.Tensor) and t.numel() == 1 else
             (tuple(t.tolist()) if isinstance(t, torch.Tensor) else t) for t in types]
    if len(types) != len(labels):
        raise ProbeError(f"{len(types)} types for {len(labels)} labels; give one type per example")
    gen = torch.Generator().manual_seed(seed)
    pool = labels.long()
    table = {}
    for t in sorted(set(types), key=repr):
        table[t] = int(pool[torch.randint(len(pool), (1,), generator=gen)])
    return torch.tensor([table[t] for t in types], dtype=torch.long)


@dataclass
class LinearFit:
    """A fitted linear classifier on standardised features: `scores(x) -> [n, classes]` (logits for
    "logistic", one-hot regression outputs for "ridge"); `predict(x)` their argmax."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # [d + 1, classes], bias last

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - self.mean) / self.std
        return torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1) @ self.weight

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x).argmax(-1)


def fit_linear(x: torch.Tensor, y: torch.Tensor, *, kind: str = "logistic", l2: float = 1e-2, iters: int = 100,
               n_classes: int | None = None) -> LinearFit:
    """Fit a linear classifier `x [n, d] -> y [n]` (class ids): multinomial logistic regression (L2,
    L-BFGS) or ridge regression onto one-hot labels, on features standardised with `x`'s statistics."""
    if kind not in KINDS:
        raise ProbeError(f"unknown probe kind {kind!r}; choose from {', '.join(KINDS)}")
    x, y = x.double(), y.long()
    mean, std = x.mean(0), x.std(0).nan_to_num(1.0).clamp_min(1e-8)
    z = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # bias column
    n_cls = n_classes or int(y.max()) + 1
    if kind == "ridge":
        onehot = torch.nn.functional.one_hot(y, n_cls).double()
        w = torch.linalg.solve(z.T @ z + l2 * len(z) * torch.eye(z.shape[1], dtype=z.dtype), z.T @ onehot)
    else:
        w = torch.zeros(z.shape[1], n_cls, dtype=z.dtype, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=iters, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(z @ w, y) + l2 * (w[:-1] ** 2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        w = w.detach()
    return LinearFit(mean, std, w)


def fit_probe(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, test: torch.Tensor, *, kind: str = "logistic",
              l2: float = 1e-2, iters: int = 100) -> tuple[float, float]:
    """(train accuracy, held-out accuracy) of a linear probe `x [n, d] -> y [n]` (class ids)."""
    y = y.long()
    fit = fit_linear(x[train], y[train], kind=kind, l2=l2, iters=iters, n_classes=int(y.max()) + 1)
    pred = fit.predict(x)
    return float((pred[train] == y[train]).double().mean()), float((pred[test] == y[test]).double().mean())


@dataclass
class ProbeResult:
    """Held-out probe accuracy over `[step, layer]` (steps = the recorded execution steps)."""

    steps: list[int]
    layers: int
    accuracy: torch.Tensor          # [step, layer] held-out
    train_accuracy: torch.Tensor    # [step, layer]
    control_accuracy: torch.Tensor  # [step, layer] held-out, control task (NaN without types)
    majority: float                 # held-out accuracy of always guessing the commonest training label
    n_train: int
    n_test: int
    kind: str
    name: str

    @property
    def selectivity(self) -> torch.Tensor:
        """`[step, layer]` accuracy - control accuracy (Hewitt & Liang 2019)."""
        return self.accuracy - self.control_accuracy

    def to_dict(self) -> dict:
        best = divmod(int(torch.nan_to_num(self.accuracy, -1).argmax()), self.layers)
        return {"summary": float(self.accuracy.max()), "best": {"step": self.steps[best[0]], "layer": best[1]},
                "steps": self.steps, "accuracy": self.accuracy.tolist(), "train_accuracy": self.train_accuracy.tolist(),
                "control_accuracy": self.control_accuracy.tolist(), "selectivity": self.selectivity.tolist(),
                "majority": self.majority, "n_train": self.n_train, "n_test": self.n_test, "kind": self.kind,
                "name": self.name}

    def figure(self, title: str = "") -> Figure:
        """Held-out accuracy over step × layer (values printed; selectivity in brackets)."""
        acc, sel = self.accuracy.numpy(), self.selectivity.numpy()
        fig = Figure(figsize=(max(4.0, 1.5 + 1.1 * self.layers), 0.9 + 0.45 * len(self.steps)), dpi=100,
                     layout="constrained")
        ax = fig.subplots()
        im = ax.imshow(acc, cmap="viridis", vmin=min(self.majority, float(np.nanmin(acc))), vmax=1.0, aspect="auto")
        for (r, c), v in np.ndenumerate(acc):
            text = f"{v:.2f}" + (f"\n({sel[r, c]:+.2f})" if np.isfinite(sel[r, c]) else "")
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color="white" if v < 0.8 else "black")
        ax.set_xticks(range(self.layers))
        ax.set_yticks(range(len(self.steps)), self.steps)
        ax.set_xlabel(f"layer ({self.name})")
        ax.set_ylabel("step")
        fig.colorbar(im, ax=ax, label="held-out accuracy")
        ax.set_title(title or f"{self.kind} probe, n = {self.n_train} train / {self.n_test} held out, majority "
                              f"{self.majority:.2f} (selectivity in brackets)", fontsize=9)
        return fig


def linear_probe(traj, labels, *, position, name: str = "blocks.*.hook_resid_post", types=None,
                 kind: str = "logistic", train_frac: float = 0.5, seed: int = 0, l2: float = 1e-2) -> ProbeResult:
    """Fit a linear probe per (recorded step, layer) predicting `labels` (`[B]` class ids, one per prompt)
    from `name` (a glob with `*` for the layer) at canvas `position` (an int, or `[B]` one per prompt).

    `types` (`[B]`, any hashables, e.g. the column's operand digits) defines the control task; without
    it `control_accuracy` is NaN. Train and held-out prompts come from one seeded split.
    """
    acts = traj.stack(name)  # [R, layer, B, P, d]
    labels = torch.as_tensor(labels).long()
    n_b = acts.shape[2]
    if labels.shape != (n_b,):
        raise ProbeError(f"labels of shape {tuple(labels.shape)} for a batch of {n_b}; give one label per prompt")
    pos = torch.as_tensor(position).long().expand(n_b) if not isinstance(position, torch.Tensor) or \
        position.dim() == 0 else position.long()
    positions = traj.meta.get("positions") or list(range(acts.shape[3]))
    missing = sorted({int(p) for p in pos} - set(positions))
    if missing:
        raise ProbeError(f"canvas position {missing[0]} was not recorded (recorded: {positions}); capture with "
                         "positions=None or include it")
    col = torch.tensor([positions.index(int(p)) for p in pos])
    feats = acts[:, :, torch.arange(n_b), col].float()  # [R, layer, B, d]
    train, test = split(n_b, train_frac, seed)
    control = control_labels(types, labels, seed) if types is not None else None
    n_r, n_l = feats.shape[:2]
    acc, tr, ctl = (torch.full((n_r, n_l), float("nan")) for _ in range(3))
    for r in range(n_r):
        for layer in range(n_l):
            tr[r, layer], acc[r, layer] = fit_probe(feats[r, layer], labels, train, test, kind=kind, l2=l2)
            if control is not None:
                ctl[r, layer] = fit_probe(feats[r, layer], control, train, test, kind=kind, l2=l2)[1]
    commonest = int(torch.bincount(labels[train]).argmax())
    majority = float((labels[test] == commonest).double().mean())
    return ProbeResult(list(traj.recorded_steps), n_l, acc, tr, ctl, majority, len(train), len(test), kind, name)


__all__ = ["linear_probe", "fit_probe", "fit_linear", "LinearFit", "control_labels", "split", "ProbeResult", "ProbeError", "KINDS"]
