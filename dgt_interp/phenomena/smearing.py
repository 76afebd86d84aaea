"""Token smearing and sequence smearing: final tokens seen at shifted positions in earlier steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from dgt_interp.phenomena.base import PhenomenaError, check_canvas
from dgt_interp.stats import fraction, nanmean
from dgt_interp.trajectory import answer_mask


@dataclass
class TokenSmearing:
    """Mass of each final token at neighbouring offsets, per canvas step.

    mass `[K, D]`: at canvas step k (from 0) and offset d = offsets[j], the mean over (row, answer
    position p) of the probability (or argmax indicator) of token final[p] at position p + d,
    counting only pairs where final[p + d] != final[p] (so a token that is really there is not
    smearing). counts `[K, D]`: pairs averaged (0 -> NaN mass).
    """

    mass: torch.Tensor
    counts: torch.Tensor
    offsets: list[int]
    source: str
    kind: str

    def neighbour_mass(self) -> torch.Tensor:
        """`[K]` summed mass over the non-zero offsets (NaN-free sum)."""
        cols = [j for j, d in enumerate(self.offsets) if d != 0]
        return torch.nan_to_num(self.mass[:, cols]).sum(-1)

    def peak(self) -> tuple[int, int, float]:
        """(step, offset, mass) of the largest off-centre mass."""
        m = self.mass.clone()
        m[:, self.offsets.index(0)] = float("nan")
        m = torch.nan_to_num(m, nan=-1.0)
        i = int(m.argmax())
        k, j = divmod(i, m.shape[1])
        return k, self.offsets[j], float(m[k, j])

    def to_dict(self) -> dict:
        k, d, v = self.peak()
        return {"source": self.source, "kind": self.kind, "offsets": self.offsets,
                "mass": [[None if math.isnan(x) else x for x in row] for row in self.mass.tolist()],
                "neighbour_mass_by_step": self.neighbour_mass().tolist(),
                "peak": {"step": k, "offset": d, "mass": v}}

    def figure(self, title: str = "") -> Figure:
        fig = Figure(figsize=(1.8 + 0.5 * len(self.offsets), 1.4 + 0.3 * self.mass.shape[0]), layout="constrained")
        ax = fig.add_subplot()
        im = ax.imshow(self.mass.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_facecolor("0.85")
        ax.set_xticks(range(len(self.offsets)), [f"{d:+d}" for d in self.offsets])
        ax.set_yticks(range(self.mass.shape[0]))
        ax.set_xlabel("offset d (token final[p] seen at p + d)")
        ax.set_ylabel("canvas step")
        fig.colorbar(im, ax=ax, label=f"mean {'probability' if self.source == 'probs' else 'argmax indicator'}")
        ax.set_title(title or f"token smearing ({self.kind}, {self.source})", fontsize=10)
        return fig


def token_smearing(traj, *, canvas: int = 0, max_offset: int = 2, source: str = "auto",
                   eos_id: int | None = None, positions=None) -> TokenSmearing:
    """Token smearing *(ours)*: for each final token, its mass at offsets ±1..±max_offset in earlier steps.

    `source`: "probs" = softmax of the recorded `processed_logits` (capture with
    `record=("processed_logits",)`, all positions); "argmax" = 1 where the argmax canvas holds the
    token; "auto" = probs if recorded, else argmax. Offsets d count where the token *is* relative to
    where it ends up: mass at d = +1 means token final[p] sits one position to the right of p.
    Averages over active rows and answer positions p whose final token differs from final[p + d];
    `positions` (canvas positions) restricts p to a region, e.g. a list whose place in the canvas varies.
    """
    if source not in ("auto", "probs", "argmax"):
        raise PhenomenaError(f"unknown source={source!r}; use 'auto', 'probs' or 'argmax'")
    if source == "auto":
        source = "probs" if "processed_logits" in traj.names else "argmax"
    check_canvas(traj, canvas)
    steps, active = traj.active_rows(canvas)
    final = traj.final_tokens(canvas)
    mask = _region(answer_mask(final, eos_id), positions)
    b_n, length = final.shape
    if source == "probs":
        if "processed_logits" not in traj.names:
            raise PhenomenaError("source='probs' needs processed_logits; capture with record=('processed_logits',)")
        if traj.positions != list(range(length)):
            raise PhenomenaError("token smearing needs every canvas position recorded; capture with positions=None")
        missing = [s for s in steps if s not in traj.recorded_steps]
        if missing:
            raise PhenomenaError(f"processed_logits missing at steps {missing[:5]}; capture with steps=None")
        probs = torch.softmax(traj["processed_logits"][[traj.step_index(s) for s in steps]].float(), -1)  # [K,B,L,V]
    else:
        arg = traj.records["argmax_canvas"][torch.tensor(steps)]  # [K, B, L]
    offsets = list(range(-max_offset, max_offset + 1))
    mass = torch.zeros(len(steps), len(offsets))
    counts = torch.zeros(len(steps), len(offsets))
    for j, d in enumerate(offsets):
        p = torch.arange(length)
        q = p + d
        ok = (q >= 0) & (q < length)
        p, q = p[ok], q[ok]
        tok = final[:, p]  # [B, n]
        valid = mask[:, p] & ((final[:, q] != tok) | (d == 0))  # [B, n]
        if source == "probs":
            vals = probs[:, :, q].gather(-1, tok[None, :, :, None].expand(len(steps), -1, -1, 1))[..., 0]  # [K,B,n]
        else:
            vals = (arg[:, :, q] == tok[None]).float()
        w = valid[None] & active[:, :, None]  # [K, B, n]
        counts[:, j] = w.sum((1, 2)).float()
        mass[:, j] = (vals * w).sum((1, 2)) / counts[:, j].clamp(min=1)
    mass[counts == 0] = float("nan")
    return TokenSmearing(mass, counts, offsets, source, traj.kind)


@dataclass
class SequenceSmearing:
    """Best-shift alignment of each intermediate argmax canvas to the final canvas.

    score `[B, K, D]`: fraction of answer positions p (with p + d inside the canvas) where the
    argmax canvas at step k holds final[p] at p + d; NaN where the row was not active or no p fits.
    best_shift `[B, K]`: the d with the highest score (ties -> smallest |d|, then d > 0; NaN if
    inactive). smeared `[B, K]`: best_shift != 0 and its score beats the unshifted score.
    """

    score: torch.Tensor
    best_shift: torch.Tensor
    smeared: torch.Tensor
    offsets: list[int]
    kind: str

    def to_dict(self) -> dict:
        finite = torch.isfinite(self.best_shift)
        shifted = self.best_shift[self.smeared]
        return {"kind": self.kind, "offsets": self.offsets,
                "fraction_steps_smeared": fraction(self.smeared, finite),
                "rows_with_smearing": int(self.smeared.any(-1).sum()), "rows": int(self.score.shape[0]),
                "shift_histogram": {str(d): int((shifted == d).sum()) for d in self.offsets if d != 0},
                "mean_unshifted_score_by_step": [nanmean(self.score[:, k, self.offsets.index(0)])
                                                  for k in range(self.score.shape[1])]}

    def figure(self, title: str = "") -> Figure:
        fig = Figure(figsize=(7.5, 3.0), layout="constrained")
        a, b = fig.subplots(1, 2)
        mean = torch.stack([torch.tensor([nanmean(self.score[:, k, j]) for j in range(len(self.offsets))])
                            for k in range(self.score.shape[1])])
        im = a.imshow(mean.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        a.set_xticks(range(len(self.offsets)), [f"{d:+d}" for d in self.offsets])
        a.set_xlabel("shift d")
        a.set_ylabel("canvas step")
        a.set_title("mean alignment score", fontsize=9)
        fig.colorbar(im, ax=a, label="mean alignment score")
        frac = [fraction(self.smeared[:, k], torch.isfinite(self.best_shift[:, k])) for k in range(self.score.shape[1])]
        b.bar(range(len(frac)), [0 if math.isnan(f) else f for f in frac], color="tab:red")
        b.set_ylim(0, 1)
        b.set_xlabel("canvas step")
        b.set_ylabel("fraction of rows best aligned shifted")
        fig.suptitle(title or f"sequence smearing ({self.kind})", fontsize=10)
        return fig


def _region(mask: torch.Tensor, positions) -> torch.Tensor:
    """`mask` `[B, L]` restricted to canvas `positions` (None: unchanged)."""
    if positions is None:
        return mask
    keep = torch.zeros(mask.shape[-1], dtype=torch.bool)
    pos = list(positions)
    if any(not isinstance(p, int) or not 0 <= p < mask.shape[-1] for p in pos):
        raise PhenomenaError(f"positions {pos} out of range: the canvas has {mask.shape[-1]} positions")
    keep[pos] = True
    return mask & keep


def sequence_smearing(traj, *, canvas: int = 0, max_shift: int = 2, eos_id: int | None = None,
                      positions=None) -> SequenceSmearing:
    """Sequence smearing *(ours)*: does an intermediate argmax canvas match the final one better when shifted?

    For canvas step k and shift d in [-max_shift, max_shift]: score = fraction of answer positions
    p (p + d inside the canvas) where argmax_k[p + d] == final[p]. A step is *smeared* if the best
    shift is non-zero and scores strictly higher than d = 0 (a whole subsequence sits at an offset).
    `positions` (canvas positions) restricts p to a region.
    """
    check_canvas(traj, canvas)
    steps, active = traj.active_rows(canvas)
    final = traj.final_tokens(canvas)
    mask = _region(answer_mask(final, eos_id), positions)
    arg = traj.records["argmax_canvas"][torch.tensor(steps)]  # [K, B, L]
    b_n, length = final.shape
    offsets = list(range(-max_shift, max_shift + 1))
    score = torch.full((b_n, len(steps), len(offsets)), float("nan"))
    for j, d in enumerate(offsets):
        p = torch.arange(length)
        q = p + d
        ok = (q >= 0) & (q < length)
        p, q = p[ok], q[ok]
        hit = (arg[:, :, q] == final[None, :, p]).float()  # [K, B, n]
        w = mask[:, p][None].expand_as(hit)
        n = w.sum(-1)
        s = (hit * w).sum(-1) / n.clamp(min=1)
        s[n == 0] = float("nan")
        score[:, :, j] = s.T
    score[~active.T] = float("nan")
    pref = torch.tensor([-abs(d) * 1e-6 + (1e-9 if d > 0 else 0) for d in offsets])  # tie-break
    ranked = torch.nan_to_num(score, nan=-1.0) + pref
    best = torch.tensor(offsets, dtype=torch.float)[ranked.argmax(-1)]
    finite = torch.isfinite(score).any(-1)
    best[~finite] = float("nan")
    zero = score[..., offsets.index(0)]
    best_val = torch.nan_to_num(score, nan=-1.0).amax(-1)
    smeared = finite & (best != 0) & (best_val > torch.nan_to_num(zero, nan=-1.0))
    return SequenceSmearing(score, best, smeared, offsets, traj.kind)


__all__ = ["TokenSmearing", "token_smearing", "SequenceSmearing", "sequence_smearing"]
