"""What a patched run is scored by: a `Metric` maps a run's outputs to one value per row.

A metric is any callable `metric(logits [batch, pos, vocab], tokens [batch, pos]) -> [batch]`
(TL's `reduce="mean"` convention: per row; sweeps average over the prompt batch), with an optional
`step` attribute: None = the run's final output, an int = the state after that execution step
(`Trajectory.outputs(step)`). `logits` are the model's raw logits at each row's last active step
of each canvas; `tokens` are the emitted tokens (the argmax canvas). A one-argument
`fn(logits) -> [batch]` is accepted too.

- `LogitDiff(pos, correct, wrong)`: logit[correct] - logit[wrong] summed over positions;
- `AnswerProb(pos, tokens)`: the probability that every position holds its answer token;
- `ExactMatch(pos, tokens)`: 1.0 where the emitted tokens equal the answer.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch

from dgt_interp.patching.sites import PatchingError


@runtime_checkable
class Metric(Protocol):
    """`metric(logits [batch, pos, vocab], tokens [batch, pos]) -> [batch]`; `step`: None = final output."""

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor: ...


def _as_list(x) -> list[int]:
    return [int(x)] if isinstance(x, int) else [int(i) for i in x]


def _broadcast(tok, pos: list[int]) -> list[int]:
    toks = _as_list(tok)
    if len(toks) == 1:
        return toks * len(pos)
    if len(toks) != len(pos):
        raise PatchingError(f"{len(toks)} answer tokens for {len(pos)} positions; give one token per position")
    return toks


@dataclass
class LogitDiff:
    """logit[correct] - logit[wrong] at output position(s) `pos`, summed over positions. `[batch]`.

    `correct`/`wrong`: one token id per position (or one id for all). `step`: None = final output,
    an int = the logits of that denoising step (execution order).
    """

    pos: int | Sequence[int]
    correct: int | Sequence[int]
    wrong: int | Sequence[int]
    step: int | None = None

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        pos = _as_list(self.pos)
        c, w = _broadcast(self.correct, pos), _broadcast(self.wrong, pos)
        lp = logits[:, pos].float()
        idx = torch.arange(len(pos), device=lp.device)
        c, w = torch.tensor(c, device=lp.device), torch.tensor(w, device=lp.device)
        return (lp[:, idx, c] - lp[:, idx, w]).sum(-1)


@dataclass
class AnswerProb:
    """Probability of the answer `tokens` at positions `pos`: product of the per-position softmax
    probabilities (the chance that every position's token is right under the model's marginals). `[batch]`."""

    pos: int | Sequence[int]
    tokens: int | Sequence[int]
    step: int | None = None

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        pos = _as_list(self.pos)
        t = _broadcast(self.tokens, pos)
        lp = torch.log_softmax(logits[:, pos].float(), -1)
        return lp[:, torch.arange(len(pos), device=lp.device), torch.tensor(t, device=lp.device)].sum(-1).exp()


@dataclass
class ExactMatch:
    """1.0 where the emitted tokens at `pos` equal `tokens` (all of them), else 0.0. `[batch]`.

    Emitted tokens: the argmax canvas the run emits (final) or holds after `step`.
    """

    pos: int | Sequence[int]
    tokens: int | Sequence[int]
    step: int | None = None

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        pos = _as_list(self.pos)
        emitted = tokens[:, pos] if tokens is not None else logits[:, pos].argmax(-1)
        want = torch.tensor(_broadcast(self.tokens, pos), device=emitted.device)
        return (emitted == want).all(-1).float()


def normalise(values: torch.Tensor, clean: float | torch.Tensor, corrupted: float | torch.Tensor) -> torch.Tensor:
    """TL's normalised recovery: (patched - corrupted) / (clean - corrupted); 0 = no effect, 1 = clean restored."""
    return (values - corrupted) / (clean - corrupted)


def call_metric(metric, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`metric(logits, tokens)` (or `metric(logits)` for a one-argument callable) checked to be `[batch]` float."""
    params = inspect.signature(metric).parameters if callable(metric) else {}
    out = metric(logits, tokens) if len(params) >= 2 else metric(logits)
    out = torch.as_tensor(out)
    if out.ndim != 1 or out.shape[0] != logits.shape[0]:
        raise PatchingError(f"the metric must return one value per row ([batch] = [{logits.shape[0]}]), "
                            f"got shape {tuple(out.shape)}")
    return out.float()


def metric_values(traj, metric) -> torch.Tensor:
    """`[batch]` metric values of a recorded run (at `metric.step` if the metric has one, else final)."""
    logits, tokens = traj.outputs(getattr(metric, "step", None))
    return call_metric(metric, logits, tokens)


__all__ = ["Metric", "LogitDiff", "AnswerProb", "ExactMatch", "normalise", "call_metric", "metric_values"]
