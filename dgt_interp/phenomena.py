"""Phenomenon detectors: general functions of a `Trajectory` (DiffusionGemma or its AR twin).

Each detector returns a small result object with numbers (tensors + `to_dict()` for JSON) and a
`figure()` (a matplotlib `Figure`, built without pyplot). Definitions are *ours* where the paper's
are not public (REFERENCES.md, "Diffusion-specific phenomena"); each is stated in its docstring and
in docs/case_studies.md.

Common ground (all detectors):

- They work per canvas (`canvas=0` by default): the steps of that canvas, in execution order,
  re-indexed from 0 (`k` = the k-th step of the canvas). A row's steps are those where it is
  `active`; its **final** token at position p is its argmax canvas at its last active step (what
  `generate` emits).
- `eos_id`: if given, only positions up to and including the first EOS of the final canvas are
  analysed (the answer); positions after it are padding. None = all positions.
- AR twin trajectories have the same layout (step k writes position k), so every record-only
  detector runs unchanged and gives the chronological reference: commit step of position p = p.

Detectors from records only (no model needed):
    commit_order(traj)        -> CommitOrder     non-chronological reasoning (order part)
    token_smearing(traj)      -> TokenSmearing   mass of each final token at neighbouring offsets
    sequence_smearing(traj)   -> SequenceSmearing best-shift alignment of intermediate canvases
    find_drafts(traj)         -> Drafts          tokens drafted at intermediate steps, later overwritten
Causal detectors (a DiffusionGemma model; patching with replayed sampler noise, `dgt_interp.patching`):
    canvas_flips(model, base_ids, source_ids) -> CanvasFlips  patch the input canvas at (step, q)
        from a source run; which final tokens of the base run flip. Summaries:
    CanvasFlips.later_on_earlier()      causal effect of later positions on earlier ones
    draft_effects(drafts, flips)        causal effect of intermediate drafts on the final answer
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from matplotlib.figure import Figure

COMMIT_BY = ("argmax", "sampler")


class PhenomenaError(ValueError):
    """Bad detector arguments (one-line message that says what to do)."""


# ---------------------------------------------------------------------------------------------
# shared: per-row step selection
# ---------------------------------------------------------------------------------------------


def _canvas_steps(traj, canvas: int) -> list[int]:
    canvases = traj.records["canvas"].tolist()
    n_c = (max(canvases) + 1) if canvases else 0
    if not isinstance(canvas, int) or not 0 <= canvas < n_c:
        raise PhenomenaError(f"canvas {canvas!r} is out of range: the trajectory has {n_c} canvases (0..{n_c - 1})")
    return [s for s, c in enumerate(canvases) if c == canvas]


def row_steps(traj, canvas: int = 0) -> list[list[int]]:
    """Per batch row, the global step indices of `canvas` where the row was active (execution order)."""
    steps = _canvas_steps(traj, canvas)
    active = traj.records["active"].bool()
    out = []
    for b in range(active.shape[1]):
        mine = [s for s in steps if bool(active[s, b])]
        out.append(mine or steps[:1])
    return out


def final_canvas(traj, canvas: int = 0) -> torch.Tensor:
    """`[B, L]` the emitted tokens of `canvas`: each row's argmax canvas at its last active step."""
    arg = traj.records["argmax_canvas"]
    return torch.stack([arg[st[-1], b] for b, st in enumerate(row_steps(traj, canvas))])


def answer_mask(final: torch.Tensor, eos_id: int | None, include_eos: bool = True) -> torch.Tensor:
    """`[B, L]` bool: positions up to the first `eos_id` (the EOS itself iff `include_eos`; all
    positions if `eos_id` is None or absent from the row)."""
    if eos_id is None:
        return torch.ones_like(final, dtype=torch.bool)
    is_eos = final == eos_id
    before = (is_eos.long().cumsum(-1) - is_eos.long()) == 0  # no EOS strictly before p
    if not include_eos:
        before &= ~is_eos
    has = is_eos.any(-1, keepdim=True)
    return torch.where(has, before, torch.ones_like(before))


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either side is constant or n < 2."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum()) / den if den > 0 else float("nan")


def _ranks(v: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(v, stable=True)
    ranks = torch.empty_like(v)
    ranks[order] = torch.arange(len(v), dtype=v.dtype)
    for val in torch.unique(v):  # average ranks of ties
        m = v == val
        ranks[m] = ranks[m].mean()
    return ranks


def _nanmean(t: torch.Tensor) -> float:
    t = t[torch.isfinite(t)]
    return float(t.mean()) if t.numel() else float("nan")


# ---------------------------------------------------------------------------------------------
# non-chronological reasoning: commit order
# ---------------------------------------------------------------------------------------------


@dataclass
class CommitOrder:
    """When each position commits, and whether positions commit left to right.

    commit_step `[B, L]` float: the canvas step (from 0) at which the position committed; NaN =
        position outside the answer mask. n_steps `[B]`: the row's steps in this canvas.
    rho `[B]`: Spearman correlation between commit step and position over the row's answer
        positions (+1 = left to right, -1 = right to left, NaN = all committed at once).
    """

    commit_step: torch.Tensor
    n_steps: torch.Tensor
    rho: torch.Tensor
    by: str
    kind: str

    @property
    def mean_rho(self) -> float:
        """Mean rho over rows where it is defined (NaN if none)."""
        return _nanmean(self.rho)

    @property
    def rows_with_order(self) -> int:
        """Rows whose answer positions did not all commit at the same step."""
        return int(torch.isfinite(self.rho).sum())

    def to_dict(self) -> dict:
        cs = self.commit_step
        return {
            "by": self.by, "kind": self.kind, "rows": int(cs.shape[0]),
            "rows_with_order": self.rows_with_order, "mean_rho": self.mean_rho,
            "fraction_rho_negative": _frac(self.rho < 0, torch.isfinite(self.rho)),
            "mean_steps": float(self.n_steps.float().mean()) if self.n_steps.numel() else float("nan"),
            "mean_commit_step_by_position": [_nanmean(cs[:, p]) for p in range(cs.shape[1])],
            "fraction_committed_at_step0": _frac(cs == 0, torch.isfinite(cs)),
        }

    def figure(self, title: str = "") -> Figure:
        """Left: commit step per position (each row a faint line, mean bold). Right: rho per row."""
        cs = self.commit_step
        fig = Figure(figsize=(8.5, 3.0), layout="constrained")
        a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
        pos = torch.arange(cs.shape[1])
        for row in cs[:64]:
            a.plot(pos, row, color="tab:blue", alpha=0.15, lw=1)
        a.plot(pos, [_nanmean(cs[:, p]) for p in range(cs.shape[1])], color="k", lw=2, marker="o", label="mean")
        a.set_xlabel("canvas position")
        a.set_ylabel(f"commit step ({self.by})")
        a.set_xticks(pos.tolist())
        a.legend(fontsize=8)
        rho = self.rho[torch.isfinite(self.rho)]
        b.hist(rho.numpy(), bins=torch.linspace(-1, 1, 11).numpy(), color="tab:orange")
        b.set_xlabel("Spearman rho (commit step, position)")
        b.set_ylabel("rows")
        b.set_title(f"{len(rho)}/{len(self.rho)} rows with an order", fontsize=9)
        fig.suptitle(title or f"commit order ({self.kind}, by {self.by})", fontsize=10)
        return fig


def _frac(hit: torch.Tensor, valid: torch.Tensor) -> float:
    n = int(valid.sum())
    return float((hit & valid).sum()) / n if n else float("nan")


def commit_order(traj, *, canvas: int = 0, by: str = "argmax", eos_id: int | None = None,
                 include_eos: bool = True) -> CommitOrder:
    """Per-position commit step and the rank correlation of commit order with position.

    Commit step *(ours)*: the first canvas step k after which the position's token never changes
    again, i.e. the smallest k with `X[j, p] == final[p]` for every step j >= k of the row. `by`
    picks the token record X:

    - "argmax" (default): the argmax canvas after each step (what `generate` would emit if it
      stopped there). On the AR twin this gives k = p.
    - "sampler": the token the sampler *holds* at p after step j: held iff the sampler accepted p
      at step j (DiffusionGemma re-noises every position it does not accept at that step, so an
      acceptance is not permanent: a position accepted at j and not at j+1 is random again) and
      the sampled token equals the final token. AR tokens, once written, are held forever. A
      position whose final token is not held at the row's last step (the emitted argmax differs
      from what the sampler kept) gets k = n_steps.

    Returns `CommitOrder`; rho per row = Spearman(commit step, position) over answer positions
    (`include_eos=False` leaves the EOS out: it is often the most confident position and would
    otherwise pull rho towards right-to-left).
    """
    if by not in COMMIT_BY:
        raise PhenomenaError(f"unknown by={by!r}; use one of {', '.join(COMMIT_BY)}")
    steps_per_row = row_steps(traj, canvas)
    final = final_canvas(traj, canvas)
    mask = answer_mask(final, eos_id, include_eos)
    b_n, length = final.shape
    commit = torch.full((b_n, length), float("nan"))
    n_steps = torch.tensor([len(s) for s in steps_per_row])
    rho = torch.full((b_n,), float("nan"))
    for b, st in enumerate(steps_per_row):
        idx = torch.tensor(st)
        if by == "argmax":
            same = traj.records["argmax_canvas"][idx, b] == final[b]
        else:
            acc = traj.records["accepted"][idx, b].bool()
            if traj.kind == "ar":
                acc = acc.long().cumsum(0) > 0  # AR tokens are never re-noised
            same = acc & (traj.records["sampled_canvas"][idx, b] == final[b])
        settled = same.flip(0).long().cumprod(0).sum(0)  # length of the all-true suffix
        k = (len(st) - settled).float()
        commit[b] = torch.where(mask[b], k, torch.tensor(float("nan")))
        pos = torch.nonzero(mask[b]).flatten()
        rho[b] = spearman(k[pos], pos.float())
    return CommitOrder(commit, n_steps, rho, by, traj.kind)


# ---------------------------------------------------------------------------------------------
# token smearing
# ---------------------------------------------------------------------------------------------


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


def _per_step_rows(traj, canvas: int):
    """(global step idx per canvas step k, `[K, B]` bool: row b active at canvas step k)."""
    steps = _canvas_steps(traj, canvas)
    active = traj.records["active"][torch.tensor(steps)].bool()
    return steps, active


def token_smearing(traj, *, canvas: int = 0, max_offset: int = 2, source: str = "auto",
                   eos_id: int | None = None) -> TokenSmearing:
    """Token smearing *(ours)*: for each final token, its mass at offsets ±1..±max_offset in earlier steps.

    `source`: "probs" = softmax of the recorded `processed_logits` (capture with
    `record=("processed_logits",)`, all positions); "argmax" = 1 where the argmax canvas holds the
    token; "auto" = probs if recorded, else argmax. Offsets d count where the token *is* relative to
    where it ends up: mass at d = +1 means token final[p] sits one position to the right of p.
    Averages over active rows and answer positions p whose final token differs from final[p + d].
    """
    if source not in ("auto", "probs", "argmax"):
        raise PhenomenaError(f"unknown source={source!r}; use 'auto', 'probs' or 'argmax'")
    if source == "auto":
        source = "probs" if "processed_logits" in traj.names else "argmax"
    steps, active = _per_step_rows(traj, canvas)
    final = final_canvas(traj, canvas)
    mask = answer_mask(final, eos_id)
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


# ---------------------------------------------------------------------------------------------
# sequence smearing
# ---------------------------------------------------------------------------------------------


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
                "fraction_steps_smeared": _frac(self.smeared, finite),
                "rows_with_smearing": int(self.smeared.any(-1).sum()), "rows": int(self.score.shape[0]),
                "shift_histogram": {str(d): int((shifted == d).sum()) for d in self.offsets if d != 0},
                "mean_unshifted_score_by_step": [_nanmean(self.score[:, k, self.offsets.index(0)])
                                                  for k in range(self.score.shape[1])]}

    def figure(self, title: str = "") -> Figure:
        fig = Figure(figsize=(7.5, 3.0), layout="constrained")
        a, b = fig.subplots(1, 2)
        mean = torch.stack([torch.tensor([_nanmean(self.score[:, k, j]) for j in range(len(self.offsets))])
                            for k in range(self.score.shape[1])])
        im = a.imshow(mean.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        a.set_xticks(range(len(self.offsets)), [f"{d:+d}" for d in self.offsets])
        a.set_xlabel("shift d")
        a.set_ylabel("canvas step")
        a.set_title("mean alignment score", fontsize=9)
        fig.colorbar(im, ax=a)
        frac = [_frac(self.smeared[:, k], torch.isfinite(self.best_shift[:, k])) for k in range(self.score.shape[1])]
        b.bar(range(len(frac)), [0 if math.isnan(f) else f for f in frac], color="tab:red")
        b.set_ylim(0, 1)
        b.set_xlabel("canvas step")
        b.set_ylabel("fraction of rows best aligned shifted")
        fig.suptitle(title or f"sequence smearing ({self.kind})", fontsize=10)
        return fig


def sequence_smearing(traj, *, canvas: int = 0, max_shift: int = 2, eos_id: int | None = None) -> SequenceSmearing:
    """Sequence smearing *(ours)*: does an intermediate argmax canvas match the final one better when shifted?

    For canvas step k and shift d in [-max_shift, max_shift]: score = fraction of answer positions
    p (p + d inside the canvas) where argmax_k[p + d] == final[p]. A step is *smeared* if the best
    shift is non-zero and scores strictly higher than d = 0 (a whole subsequence sits at an offset).
    """
    steps, active = _per_step_rows(traj, canvas)
    final = final_canvas(traj, canvas)
    mask = answer_mask(final, eos_id)
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


# ---------------------------------------------------------------------------------------------
# intermediate-context reasoning: drafts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Draft:
    """One drafted token: row `batch`, canvas step `step` (from 0; global step `global_step`), position
    `pos`, the drafted `token` and the `final` token there. `in_canvas`: the sampler kept it, so the
    decoder reads it as context at the next step (else it was only the argmax proposal).
    `lifetime`: consecutive canvas steps (from `step`) the same draft stayed."""

    batch: int
    step: int
    global_step: int
    pos: int
    token: int
    final: int
    in_canvas: bool
    lifetime: int


@dataclass
class Drafts:
    """Intermediate drafts that were later overwritten (token != the final token at that position)."""

    drafts: list[Draft]
    rows: int
    n_steps: torch.Tensor  # [B]
    kind: str

    def to_dict(self) -> dict:
        by_row = torch.zeros(self.rows)
        for d in self.drafts:
            by_row[d.batch] += 1
        return {"kind": self.kind, "n_drafts": len(self.drafts),
                "n_in_canvas": sum(d.in_canvas for d in self.drafts),
                "rows_with_drafts": int((by_row > 0).sum()), "rows": self.rows,
                "mean_lifetime": (sum(d.lifetime for d in self.drafts) / len(self.drafts)) if self.drafts else 0.0,
                "examples": [d.__dict__ for d in self.drafts[:20]]}

    def figure(self, title: str = "") -> Figure:
        """Drafts per (canvas step, position): count of overwritten drafts (all rows)."""
        k = int(self.n_steps.max()) if self.n_steps.numel() else 1
        length = max([d.pos for d in self.drafts], default=0) + 1
        grid = torch.zeros(max(k, 1), max(length, 1))
        for d in self.drafts:
            grid[d.step, d.pos] += 1
        fig = Figure(figsize=(1.8 + 0.5 * grid.shape[1], 1.4 + 0.3 * grid.shape[0]), layout="constrained")
        ax = fig.add_subplot()
        im = ax.imshow(grid.numpy(), aspect="auto", cmap="Reds", interpolation="nearest")
        ax.set_xlabel("canvas position")
        ax.set_ylabel("canvas step")
        fig.colorbar(im, ax=ax, label="overwritten drafts")
        ax.set_title(title or f"{len(self.drafts)} overwritten drafts in {self.rows} rows ({self.kind})", fontsize=10)
        return fig


def find_drafts(traj, *, canvas: int = 0, eos_id: int | None = None) -> Drafts:
    """Intermediate-context reasoning *(ours)*, records part: tokens drafted at intermediate steps and
    later overwritten.

    A draft is (row, step k < last, position p) where a *model-chosen* token differs from the final
    token at p: either the sampler kept it (`accepted` and sampled: it is in the input canvas of
    step k+1, so later steps read it; `in_canvas=True`), or, if not kept, the argmax proposal at k
    (`in_canvas=False`). Consecutive steps with the same drafted token count once (its `lifetime`).
    Re-noised random tokens are not drafts. Measure their causal effect with `draft_effects`.
    """
    steps_per_row = row_steps(traj, canvas)
    final = final_canvas(traj, canvas)
    mask = answer_mask(final, eos_id)
    out: list[Draft] = []
    for b, st in enumerate(steps_per_row):
        idx = torch.tensor(st)
        acc = traj.records["accepted"][idx, b].bool()
        if traj.kind == "ar":
            acc = acc.long().cumsum(0) > 0
        sampled = traj.records["sampled_canvas"][idx, b]
        arg = traj.records["argmax_canvas"][idx, b]
        drafted = torch.where(acc, sampled, arg)  # [K, L] model-chosen token per step
        if traj.kind == "ar":  # positions not yet generated hold padding, not proposals
            drafted = torch.where(acc, sampled, final[b].expand_as(sampled))
        in_canvas = acc
        for p in torch.nonzero(mask[b]).flatten().tolist():
            k = 0
            while k < len(st) - 1:
                tok = int(drafted[k, p])
                if tok == int(final[b, p]):
                    k += 1
                    continue
                life = 1
                while k + life < len(st) - 1 and int(drafted[k + life, p]) == tok:
                    life += 1
                out.append(Draft(b, k, st[k], p, tok, int(final[b, p]), bool(in_canvas[k:k + life, p].any()), life))
                k += life
    return Drafts(out, final.shape[0], torch.tensor([len(s) for s in steps_per_row]), traj.kind)


# ---------------------------------------------------------------------------------------------
# causal effects: patch the input canvas at (step, position) from a source run
# ---------------------------------------------------------------------------------------------


class _CollectTokens:
    """A patching metric that keeps each chunk's emitted tokens (`[rows, pos]`) and returns zeros."""

    def __init__(self):
        self.tokens: list[torch.Tensor] = []

    def __call__(self, logits, tokens):
        self.tokens.append(tokens.detach().cpu())
        return torch.zeros(tokens.shape[0])


def patched_outputs(p, patches, *, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """`[n_patches, batch, pos]` emitted tokens of the base (corrupted) run of `Patching` `p` with each
    patch (a `Site` or list of Sites) applied; batched along the batch axis by `Patching.iter_patches`."""
    collect = _CollectTokens()
    out = []
    for _, values in p.iter_patches(patches, collect, batch_size=batch_size, progress=progress):
        toks = collect.tokens.pop()
        out.append(toks.view(len(values), p.batch, -1))
    return torch.cat(out) if out else torch.zeros(0, p.batch, 0, dtype=torch.long)


@dataclass
class CanvasFlips:
    """Which final tokens of the base run change when one input-canvas position is patched at one step.

    flips `[K, Q, B, L]` bool: patching position q at canvas step k from the source run flips the base
    run's final token at position p in row b. patched `[K, Q, B]` bool: the patch changed something
    (the source's token at (k, q) differed from the base's; else flips are False by construction).
    base_final `[B, L]`, mask `[B, L]` (answer positions), steps (global step of each k), positions
    (the canvas position of each q), base (the base run's `Trajectory`, with the replayed noise:
    find drafts on it, `find_drafts(flips.base)`, for `draft_effects`).
    """

    flips: torch.Tensor
    patched: torch.Tensor
    base_final: torch.Tensor
    mask: torch.Tensor
    steps: list[int]
    positions: list[int]
    channels: tuple[str, ...]
    base: object = None

    def effect(self) -> torch.Tensor:
        """`[Q, L]` flip rate of p when q is patched, max over steps of the mean over rows where the
        patch changed the input (NaN if it never did) and p is an answer position."""
        k_n, q_n, b_n, l_n = self.flips.shape
        out = torch.full((k_n, q_n, l_n), float("nan"))
        for k in range(k_n):
            for q in range(q_n):
                rows = self.patched[k, q]
                w = rows[:, None] & self.mask  # [B, L]
                n = w.sum(0)
                v = (self.flips[k, q] & w).sum(0).float() / n.clamp(min=1)
                v[n == 0] = float("nan")
                out[k, q] = v
        return torch.nan_to_num(out, nan=-1.0).amax(0).masked_fill(~torch.isfinite(out).any(0), float("nan"))

    def later_on_earlier(self) -> dict:
        """Causal effect of later positions on earlier ones *(ours)*: mean of `effect()[q, p]` over q > p,
        next to the mean over q < p (earlier on later) and the diagonal (a position on itself)."""
        e = self.effect()
        q, p = torch.meshgrid(torch.tensor(self.positions), torch.arange(e.shape[1]), indexing="ij")
        return {"later_on_earlier": _nanmean(e[q > p]), "earlier_on_later": _nanmean(e[q < p]),
                "self": _nanmean(e[q == p]), "channels": list(self.channels), "steps": self.steps}

    def figure(self, title: str = "") -> Figure:
        e = self.effect()
        fig = Figure(figsize=(4.4, 3.6), layout="constrained")
        ax = fig.add_subplot()
        im = ax.imshow(e.numpy(), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_facecolor("0.85")
        ax.set_xlabel("affected position p (final token flips)")
        ax.set_ylabel("patched position q")
        ax.set_yticks(range(len(self.positions)), [str(q) for q in self.positions])
        fig.colorbar(im, ax=ax, label="flip rate (max over steps)")
        s = self.later_on_earlier()
        ax.set_title(title or f"later→earlier {s['later_on_earlier']:.2f}, earlier→later {s['earlier_on_later']:.2f}",
                     fontsize=9)
        return fig


CHANNELS = {"canvas": "hook_embed", "self_cond": "self_cond.hook_logits_in"}


def canvas_flips(model, base_ids: torch.Tensor, source_ids: torch.Tensor, *, steps=None, positions=None,
                 channels=("canvas",), canvas: int = 0, eos_id: int | None = None, seed: int = 0,
                 attention_mask=None, source_attention_mask=None, batch_size: int = 64, progress: bool = False,
                 **generation_kwargs) -> CanvasFlips:
    """Patch (resample-ablate) each input-canvas position q at each step from a source run into the base run.

    Runs `dgt_interp.patching.Patching(model, clean=source, corrupted=base)` (both runs replay the same
    sampler noise, so a position that is re-noised in both holds the same random token and the patch
    is a no-op there) and records, per (step k, position q), the base run's emitted tokens.
    `channels`: "canvas" (the token embedding at q: the token the decoder reads) and/or
    "self_cond" (the previous step's logits at q entering the self-conditioning channel; absent at a
    canvas's first step). `steps`: canvas steps (from 0) to patch, None = all both runs reached.
    DiffusionGemma only: on the AR twin later positions cannot affect earlier ones (causal attention).
    """
    from dgt_interp.patching import Patching, Site, run_outputs

    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or not channels:
        raise PhenomenaError(f"unknown channels {unknown or channels!r}; use any of {', '.join(CHANNELS)}")
    p = Patching(model, source_ids, base_ids, seed=seed, attention_mask=source_attention_mask,
                 corrupted_attention_mask=attention_mask, **generation_kwargs)
    if p.kind != "diffusion":
        raise PhenomenaError("canvas patching needs a DiffusionGemma model; on the AR twin later positions cannot "
                             "affect earlier ones (causal attention), so the effect is 0 by construction")
    all_steps = [s for s in _canvas_steps(p.corrupted, canvas) if s < p.n_steps]
    ks = list(range(len(all_steps))) if steps is None else [steps] if isinstance(steps, int) else list(steps)
    bad = [k for k in ks if not 0 <= k < len(all_steps)]
    if bad:
        raise PhenomenaError(f"canvas step {bad[0]} out of range: both runs reached {len(all_steps)} steps of canvas {canvas}")
    gsteps = [all_steps[k] for k in ks]
    length = p.corrupted.records["input_canvas"].shape[-1]
    qs = list(range(length)) if positions is None else [positions] if isinstance(positions, int) else list(positions)
    if any(not 0 <= q < length for q in qs):
        raise PhenomenaError(f"positions {qs} out of range: the canvas has {length} positions (0..{length - 1})")
    patches, cells = [], []
    for i, s in enumerate(gsteps):
        for j, q in enumerate(qs):
            sites = [Site(CHANNELS[c], s, q) for c in channels
                     if not (c == "self_cond" and not bool(p.corrupted.records["has_self_cond"][s].any()))]
            if sites:
                patches.append(sites)
                cells.append((i, j))
    _, base_tokens = run_outputs(p.corrupted)
    l0 = canvas * length
    base_final = base_tokens[:, l0:l0 + length]
    flips = torch.zeros(len(gsteps), len(qs), p.batch, length, dtype=torch.bool)
    patched = torch.zeros(len(gsteps), len(qs), p.batch, dtype=torch.bool)
    outs = patched_outputs(p, patches, batch_size=batch_size, progress=progress)
    src_in, base_in = p.clean.records["input_canvas"], p.corrupted.records["input_canvas"]
    prompts_differ = (source_ids != base_ids).any(-1).cpu()
    for (i, j), toks in zip(cells, outs):
        flips[i, j] = toks[:, l0:l0 + length] != base_final
        s, q = gsteps[i], qs[j]
        differs = torch.zeros(p.batch, dtype=torch.bool)
        if "canvas" in channels:
            differs |= src_in[s, :, q] != base_in[s, :, q]
        if "self_cond" in channels and bool(p.corrupted.records["has_self_cond"][s].any()):
            differs |= prompts_differ  # the logits differ whenever the prompts do
        patched[i, j] = differs
    mask = answer_mask(base_final, eos_id)
    return CanvasFlips(flips, patched, base_final, mask, gsteps, qs, tuple(channels), p.corrupted)


@dataclass
class DraftEffects:
    """Causal effect of each in-canvas draft: flips of the base run's final answer when it is patched out.

    per_draft: list of dicts (the `Draft` fields + `flips_self`, `flips_other`: final tokens changed at
    the draft's own position / at other answer positions, `answer_changed`).
    """

    per_draft: list[dict]

    def to_dict(self) -> dict:
        n = len(self.per_draft)
        return {"n_drafts_tested": n,
                "fraction_answer_changed": (sum(d["answer_changed"] for d in self.per_draft) / n) if n else float("nan"),
                "fraction_other_positions_changed": (sum(d["flips_other"] > 0 for d in self.per_draft) / n) if n
                else float("nan"),
                "examples": self.per_draft[:20]}


def draft_effects(drafts: Drafts, flips: CanvasFlips) -> DraftEffects:
    """Intermediate-context reasoning *(ours)*, causal part: for each draft the sampler kept (it is in
    the input canvas at the next step), the effect of patching it out at that step (`flips` must cover
    that step and position, same rows) on the final answer: flipped tokens at its own position and
    at other answer positions (the draft used as context). Find the drafts on the same run:
    `find_drafts(flips.base)` (a plain `capture` of a batch draws other noise). Drafts at steps `flips` did not patch, or
    whose patch changed nothing (the source held the same token), are skipped."""
    out = []
    for d in drafts.drafts:
        if not d.in_canvas:
            continue
        for life in range(d.lifetime):  # the draft is read at the step after it was kept
            g = d.global_step + life + 1
            if g not in flips.steps:
                continue
            i = flips.steps.index(g)
            if d.pos not in flips.positions or d.batch >= flips.patched.shape[2]:
                continue
            j = flips.positions.index(d.pos)
            if not bool(flips.patched[i, j, d.batch]):
                continue
            f = flips.flips[i, j, d.batch] & flips.mask[d.batch]
            other = int(f.sum()) - int(f[d.pos])
            out.append(dict(d.__dict__, read_at_step=g, flips_self=bool(f[d.pos]), flips_other=other,
                            answer_changed=bool(f.any())))
            break
    return DraftEffects(out)


# ---------------------------------------------------------------------------------------------
# constructed trajectories (known answers for validating detectors)
# ---------------------------------------------------------------------------------------------


def detect_phenomena(model, prompts, *, seed: int = 0, **generation_kwargs):
    """Run `model` on `prompts` (`Problem`s, one batch) and apply every trajectory detector.

    Returns `(traj, results)`: the captured `Trajectory` (with processed logits) and a dict with the
    exact-match `accuracy`, `commit_argmax` / `commit_sampler` (`CommitOrder`, EOS excluded),
    `token_smearing`, `sequence_smearing` and `drafts`. `generation_kwargs` choose the sampler
    setting (e.g. `sampler_config=...`, or `do_sample=False` for an AR twin).
    """
    from dgt_interp.capturing import capture
    from dgt_interp.evaluate import prompt_batch
    from dgt_interp.tasks import EOS_ID, decode_answer

    batch = prompt_batch([p.prompt for p in prompts])
    traj = capture(model, batch["input_ids"], attention_mask=batch["attention_mask"], seed=seed,
                   record=("processed_logits",), **generation_kwargs)
    n_prompt = batch["input_ids"].shape[1]
    answers = [decode_answer(r) for r in traj.sequences[:, n_prompt:]]
    results = {"accuracy": sum(a == p.answer for a, p in zip(answers, prompts)) / len(prompts),
               "commit_argmax": commit_order(traj, by="argmax", eos_id=EOS_ID, include_eos=False),
               "commit_sampler": commit_order(traj, by="sampler", eos_id=EOS_ID, include_eos=False),
               "token_smearing": token_smearing(traj, eos_id=EOS_ID),
               "sequence_smearing": sequence_smearing(traj, eos_id=EOS_ID),
               "drafts": find_drafts(traj, eos_id=EOS_ID)}
    return traj, results


def constructed_trajectory(argmax_canvas: torch.Tensor, *, accepted: torch.Tensor | None = None,
                           sampled_canvas: torch.Tensor | None = None, processed_logits: torch.Tensor | None = None,
                           active: torch.Tensor | None = None, kind: str = "diffusion", noise_token: int = 0,
                           prompt_length: int = 1):
    """A real `Trajectory` built from given per-step canvases (one canvas), to validate detectors.

    argmax_canvas `[S, B, L]`; accepted `[S, B, L]` bool (default: all True); sampled_canvas
    (default: the argmax canvas); processed_logits `[S, B, L, V]` (optional, stored as the opt-in
    record); active `[S, B]` (default all True). The input canvas of step s+1 is what the sampler
    kept after step s (accepted -> sampled, else `noise_token`); entropy comes from the logits if
    given, else 0 where accepted and 1 elsewhere.
    """
    from dgt_interp.trajectory import Trajectory

    arg = torch.as_tensor(argmax_canvas).long()
    if arg.dim() != 3:
        raise PhenomenaError(f"argmax_canvas must be [step, batch, pos], got shape {tuple(arg.shape)}")
    s_n, b_n, length = arg.shape
    acc = torch.ones_like(arg, dtype=torch.bool) if accepted is None else torch.as_tensor(accepted).bool()
    smp = arg.clone() if sampled_canvas is None else torch.as_tensor(sampled_canvas).long()
    act = torch.ones(s_n, b_n, dtype=torch.bool) if active is None else torch.as_tensor(active).bool()
    inp = torch.full_like(arg, noise_token)
    for s in range(1, s_n):
        inp[s] = torch.where(acc[s - 1], smp[s - 1], torch.full_like(smp[s - 1], noise_token))
    if processed_logits is not None:
        ent = torch.distributions.Categorical(logits=processed_logits.float()).entropy()
    else:
        ent = (~acc).float()
    records = {"input_canvas": inp, "sampled_canvas": smp, "argmax_canvas": arg, "accepted": acc, "entropy": ent,
               "active": act, "has_self_cond": torch.arange(s_n)[:, None].expand(s_n, b_n) > 0,
               "cur_step": torch.arange(s_n, 0, -1), "canvas": torch.zeros(s_n, dtype=torch.long)}
    acts, fired = {}, {}
    if processed_logits is not None:
        acts["processed_logits"] = processed_logits.float()
        fired["processed_logits"] = [True] * s_n
    meta = {"kind": kind, "prompt_length": prompt_length, "canvas_length": length, "recorded_steps": list(range(s_n)),
            "positions": list(range(length)), "names": [], "record": list(acts), "dtype": None, "backend": "constructed",
            "seed": None, "generation_kwargs": {}, "model_class": "constructed"}
    sequences = torch.cat([torch.zeros(b_n, prompt_length, dtype=torch.long), arg[-1]], 1)
    return Trajectory(meta=meta, sequences=sequences, records=records, activations=acts, fired=fired)


__all__ = [
    "detect_phenomena",
    "PhenomenaError", "COMMIT_BY", "CHANNELS", "row_steps", "final_canvas", "answer_mask", "spearman",
    "CommitOrder", "commit_order", "TokenSmearing", "token_smearing", "SequenceSmearing", "sequence_smearing",
    "Draft", "Drafts", "find_drafts", "CanvasFlips", "canvas_flips", "patched_outputs", "DraftEffects",
    "draft_effects", "constructed_trajectory",
]
