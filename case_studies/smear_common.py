"""Smearing measures shared by the studies that look for token and sequence smearing (dedupe, compose_odd):
per-row parts of `phenomena.token_smearing` (for bootstrap intervals over rows), the off-centre mass at every
step and at the first, sequence-smeared rows with Wilson intervals, and the random-order baseline of a
diffusion trajectory (the same in-place progress at random positions)."""

from __future__ import annotations

import copy

import torch

from case_studies.count_common import offcentre_mass
from dgt_interp.phenomena import token_smearing
from dgt_interp.stats import bootstrap_interval, wilson_interval
from dgt_interp.tasks import EOS_ID, VOCAB


def _only_row(traj, b: int):
    """A shallow copy of `traj` in which only row b is active (the detectors weight rows by `active`)."""
    t = copy.copy(traj)
    active = traj.records["active"].clone()
    keep = torch.zeros_like(active, dtype=torch.bool)
    keep[:, b] = True
    t.records = {**traj.records, "active": active.bool() & keep}
    return t


def _row_parts(traj, source: str, positions=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row, (mass * counts, counts) `[K, D]` of `token_smearing` on that row alone (sums over rows give
    the pooled detector: its mass is sum(mass * counts) / sum(counts))."""
    out = []
    for b in range(traj.final_tokens().shape[0]):
        ts = token_smearing(_only_row(traj, b), eos_id=EOS_ID, source=source, positions=positions)
        out.append((torch.nan_to_num(ts.mass) * ts.counts, ts.counts.clone()))
    return out


def _pooled(parts, step: int | None) -> float:
    """Off-centre token mass pooled over `parts` rows: summed over offsets d != 0 of the (row, position)-weighted
    mean at canvas step `step` (None: over every step), as `count_common.offcentre_mass` does."""
    k_max = max(p[0].shape[0] for p in parts)
    num = torch.zeros(k_max, parts[0][0].shape[1])
    cnt = torch.zeros_like(num)
    for n, c in parts:
        num[: n.shape[0]] += n
        cnt[: c.shape[0]] += c
    if step is not None:
        num, cnt = num[step:step + 1], cnt[step:step + 1]
    zero = num.shape[1] // 2
    return float(sum((num[:, j].sum() / cnt[:, j].sum().clamp(min=1)) for j in range(num.shape[1]) if j != zero))


def smear_numbers(traj, source: str, seq, seed: int, *, positions=None) -> dict:
    """Token smearing (pooled mean over steps, step 0) and sequence smearing `seq` (rows), with 95% intervals;
    `positions` restricts token smearing to a region of the canvas (as `seq` should be)."""
    ts = token_smearing(traj, eos_id=EOS_ID, source=source, positions=positions)
    parts = _row_parts(traj, source, positions)
    rows_smeared = seq.smeared.any(-1)
    n, k = int(rows_smeared.numel()), int(rows_smeared.sum())
    by_step = torch.isfinite(seq.best_shift)
    return {"source": source, "token_smearing": ts.to_dict(), "robust": offcentre_mass(ts),
            "mass_all_steps": _pooled(parts, None),
            "mass_all_steps_ci95": bootstrap_interval(parts, lambda v: _pooled(v, None), seed=seed),
            "mass_step0": _pooled(parts, 0),
            "mass_step0_ci95": bootstrap_interval(parts, lambda v: _pooled(v, 0), seed=seed),
            "sequence_smearing": seq.to_dict(),
            "rows_smeared": k, "rows": n, "rows_smeared_fraction": k / n if n else float("nan"),
            "rows_smeared_ci95": wilson_interval(k, n),
            "smeared_fraction_by_step": [float(seq.smeared[:, j][by_step[:, j]].float().mean())
                                         if by_step[:, j].any() else float("nan") for j in range(by_step.shape[1])]}


def random_order(traj, seed: int, *, positions=None):
    """The random-order baseline of a diffusion trajectory: each row keeps its steps, its final tokens and, at
    every step, the number of answer positions whose argmax already holds the final token in place; which
    positions those are is drawn at random, and every other position holds a uniformly random token of the
    vocabulary other than its final one. Same in-place progress, no systematic shift: off-centre matches
    are chance coincidences. `positions`: only those answer positions are drawn this way (the rest keep the
    run's argmax), for a study that measures smearing in a region."""
    g = torch.Generator().manual_seed(seed)
    steps, active = traj.active_rows()
    final = traj.final_tokens()
    mask = traj.answer_mask(EOS_ID)
    if positions is not None:
        keep = torch.zeros(mask.shape[-1], dtype=torch.bool)
        keep[list(positions)] = True
        mask = mask & keep
    arg = traj.records["argmax_canvas"].clone()
    b_n, length = final.shape
    for b in range(b_n):
        pos = torch.nonzero(mask[b]).flatten()
        mine = [s for k, s in enumerate(steps) if bool(active[k, b])] or steps[:1]
        for s in mine:
            n_ok = int((arg[s, b, pos] == final[b, pos]).sum())
            noise = torch.randint(0, len(VOCAB) - 1, (length,), generator=g)
            noise = noise + (noise >= final[b]).long()  # uniform over the vocabulary minus the final token
            row = noise.clone()
            ok = pos[torch.randperm(len(pos), generator=g)[:n_ok]]
            row[ok] = final[b, ok]
            arg[s, b] = row
        arg[mine[-1], b] = final[b]
    t = copy.copy(traj)
    t.records = {**traj.records, "argmax_canvas": arg}
    return t


__all__ = ["smear_numbers", "random_order"]
