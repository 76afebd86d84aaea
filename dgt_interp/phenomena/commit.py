"""Non-chronological reasoning, order part: when each position commits, and whether left to right."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from dgt_interp.phenomena.base import PhenomenaError, check_canvas
from dgt_interp.stats import bootstrap_interval, fraction, nanmean, spearman
from dgt_interp.trajectory import answer_mask

COMMIT_BY = ("argmax", "sampler")


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
        return nanmean(self.rho)

    @property
    def rows_with_order(self) -> int:
        """Rows whose answer positions did not all commit at the same step."""
        return int(torch.isfinite(self.rho).sum())

    @property
    def ci95_rho(self) -> list[float]:
        """Percentile bootstrap 95% interval of `mean_rho` over the rows with an order (1000 draws, seed 0);
        NaN with fewer than two such rows."""
        finite = self.rho[torch.isfinite(self.rho)].tolist()
        return list(bootstrap_interval(finite, lambda xs: sum(xs) / len(xs), seed=0))

    def to_dict(self) -> dict:
        cs = self.commit_step
        return {
            "by": self.by, "kind": self.kind, "rows": int(cs.shape[0]),
            "rows_with_order": self.rows_with_order, "mean_rho": self.mean_rho, "ci95_rho": self.ci95_rho,
            "fraction_rho_negative": fraction(self.rho < 0, torch.isfinite(self.rho)),
            "mean_steps": float(self.n_steps.float().mean()) if self.n_steps.numel() else float("nan"),
            "mean_commit_step_by_position": [nanmean(cs[:, p]) for p in range(cs.shape[1])],
            "fraction_committed_at_step0": fraction(cs == 0, torch.isfinite(cs)),
        }

    def figure(self, title: str = "") -> Figure:
        """Left: commit step per position (each row a faint line, mean bold). Right: rho per row."""
        cs = self.commit_step
        fig = Figure(figsize=(8.5, 3.0), layout="constrained")
        a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
        pos = torch.arange(cs.shape[1])
        for row in cs[:64]:
            a.plot(pos, row, color="tab:blue", alpha=0.15, lw=1)
        a.plot(pos, [nanmean(cs[:, p]) for p in range(cs.shape[1])], color="k", lw=2, marker="o", label="mean")
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
    check_canvas(traj, canvas)
    steps_per_row = traj.row_steps(canvas)
    final = traj.final_tokens(canvas)
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


__all__ = ["COMMIT_BY", "CommitOrder", "commit_order"]
