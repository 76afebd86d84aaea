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

Targets (`correct`, `wrong`, `tokens`) are one id (every row, every position), a flat list of one id
per position, or per prompt: a `[batch, n_pos]` nested list / 2-D tensor (`[batch, 1]`: one id per
prompt at every position), e.g. `LogitDiff(pos=5, correct=[[3], [7]], wrong=[[4], [2]])` or
`LogitDiff.per_prompt(5, correct=[3, 7], wrong=[4, 2])`. Row layout: a patched run stacks K copies
of the prompt batch along the batch axis (copy k = rows `k * batch .. (k + 1) * batch - 1`), so row r
is prompt `r % batch`; per-prompt targets follow it (any multiple of the batch is accepted).
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


def _per_prompt(tok) -> bool:
    if isinstance(tok, torch.Tensor):
        return tok.dim() == 2
    return not isinstance(tok, int) and len(tok) > 0 and not isinstance(tok[0], int) and \
        not (isinstance(tok[0], torch.Tensor) and tok[0].dim() == 0)


def targets(tok, pos: list[int], rows: int, device=None) -> torch.Tensor:
    """`[rows, n_pos]` token ids: one id, one per position, or per prompt (`[batch, n_pos]` / `[batch, 1]`,
    repeated over the K copies of the batch a patched run stacks: row r is prompt r % batch)."""
    if not _per_prompt(tok):
        return torch.tensor(_broadcast(tok, pos), device=device).expand(rows, len(pos))
    t = torch.as_tensor(tok if isinstance(tok, torch.Tensor) else [[int(i) for i in row] for row in tok],
                        dtype=torch.long, device=device)
    if t.shape[1] not in (1, len(pos)):
        raise PatchingError(f"per-prompt targets of shape {tuple(t.shape)} for {len(pos)} positions; give "
                            f"[batch, {len(pos)}] or [batch, 1]")
    if t.shape[0] == 0 or rows % t.shape[0]:
        raise PatchingError(f"{t.shape[0]} per-prompt targets for {rows} rows; give one row of targets per prompt")
    return t.expand(t.shape[0], len(pos)).repeat(rows // t.shape[0], 1)


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

    @classmethod
    def per_prompt(cls, pos, correct, wrong, step: int | None = None) -> "LogitDiff":
        """One `correct` and one `wrong` id per prompt (`[batch]` each), at every position in `pos`."""
        return cls(pos, [[int(c)] for c in correct], [[int(w)] for w in wrong], step)

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        pos = _as_list(self.pos)
        rows = logits.shape[0]
        c = targets(self.correct, pos, rows, logits.device)
        w = targets(self.wrong, pos, rows, logits.device)
        lp = logits[:, pos].float()
        return (lp.gather(-1, c[..., None]) - lp.gather(-1, w[..., None]))[..., 0].sum(-1)


@dataclass
class AnswerProb:
    """Probability of the answer `tokens` at positions `pos`: product of the per-position softmax
    probabilities (the chance that every position's token is right under the model's marginals). `[batch]`."""

    pos: int | Sequence[int]
    tokens: int | Sequence[int]
    step: int | None = None

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        pos = _as_list(self.pos)
        t = targets(self.tokens, pos, logits.shape[0], logits.device)
        lp = torch.log_softmax(logits[:, pos].float(), -1)
        return lp.gather(-1, t[..., None])[..., 0].sum(-1).exp()


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
        want = targets(self.tokens, pos, emitted.shape[0], emitted.device)
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
    """`[rows]` metric values of a recorded run (at `metric.step` if the metric has one, else final)."""
    logits, tokens = traj.outputs(getattr(metric, "step", None))
    return call_metric(metric, logits, tokens)


__all__ = ["Metric", "LogitDiff", "AnswerProb", "ExactMatch", "normalise", "call_metric", "metric_values", "targets"]
