"""Intermediate-context reasoning: tokens drafted at intermediate steps and later overwritten, and
the causal effect of patching them out (`draft_effects`, on `canvas_flips` results)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from dgt_interp.phenomena.base import check_canvas
from dgt_interp.phenomena.flips import CanvasFlips
from dgt_interp.trajectory import answer_mask


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
    check_canvas(traj, canvas)
    steps_per_row = traj.row_steps(canvas)
    final = traj.final_tokens(canvas)
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


__all__ = ["Draft", "Drafts", "find_drafts", "DraftEffects", "draft_effects"]
