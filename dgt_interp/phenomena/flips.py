"""Causal effects of the canvas: patch the input canvas at (step, position) from a source run and see
which final tokens of the base run flip (later positions on earlier ones, drafts on the answer)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from dgt_interp.patching import Patching, Site
from dgt_interp.phenomena.base import PhenomenaError, check_canvas
from dgt_interp.stats import nanmean
from dgt_interp.trajectory import answer_mask


@dataclass
class CanvasFlips:
    """Which tokens of the base run change when one input-canvas position is patched at one step.

    flips `[K, Q, B, L]` bool: patching position q at canvas step k from the source run flips the base
    run's final token at position p in row b. step_flips `[K, Q, B, L]` bool: it changes the argmax the
    patched step itself emits at p (the step that reads the patch: the draft used as context right away,
    before later steps can correct it; None where not recorded); step_argmax `[K, Q, B, L]` long: that
    argmax itself (compare with `base.records["argmax_canvas"][steps[k]]`). patched `[K, Q, B]` bool: the
    patch changed something (the source's token at (k, q) differed from the base's; else flips are False by construction).
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
    step_flips: torch.Tensor | None = None
    step_argmax: torch.Tensor | None = None
    source: object = None  # the source run's `Trajectory` (same replayed noise): what was patched in

    def _flips(self, at: str) -> torch.Tensor:
        if at == "final":
            return self.flips
        if at == "step" and self.step_flips is not None:
            return self.step_flips
        raise PhenomenaError(f"at must be 'final' or 'step' (step flips recorded: {self.step_flips is not None}), "
                             f"got {at!r}")

    def effect(self, at: str = "final") -> torch.Tensor:
        """`[Q, L]` flip rate of p when q is patched, max over steps of the mean over rows where the
        patch changed the input (NaN if it never did) and p is an answer position. `at`: "final" (the
        emitted token) or "step" (the argmax of the patched step, `step_flips`)."""
        flips = self._flips(at)
        k_n, q_n, b_n, l_n = flips.shape
        out = torch.full((k_n, q_n, l_n), float("nan"))
        for k in range(k_n):
            for q in range(q_n):
                rows = self.patched[k, q]
                w = rows[:, None] & self.mask  # [B, L]
                n = w.sum(0)
                v = (flips[k, q] & w).sum(0).float() / n.clamp(min=1)
                v[n == 0] = float("nan")
                out[k, q] = v
        return torch.nan_to_num(out, nan=-1.0).amax(0).masked_fill(~torch.isfinite(out).any(0), float("nan"))

    def later_on_earlier(self, at: str = "final") -> dict:
        """Causal effect of later positions on earlier ones *(ours)*: mean of `effect(at)[q, p]` over q > p,
        next to the mean over q < p (earlier on later) and the diagonal (a position on itself)."""
        e = self.effect(at)
        q, p = torch.meshgrid(torch.tensor(self.positions), torch.arange(e.shape[1]), indexing="ij")
        return {"later_on_earlier": nanmean(e[q > p]), "earlier_on_later": nanmean(e[q < p]),
                "self": nanmean(e[q == p]), "channels": list(self.channels), "steps": self.steps}

    def figure(self, title: str = "", at: str = "final") -> Figure:
        """Heat map of `effect(at)`: patched position q (rows) by affected position p (columns)."""
        e = self.effect(at)
        fig = Figure(figsize=(4.4, 3.6), layout="constrained")
        ax = fig.add_subplot()
        im = ax.imshow(e.numpy(), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_facecolor("0.85")
        ax.set_xlabel("affected position p (" + ("final token flips)" if at == "final" else "patched step's argmax)"))
        ax.set_ylabel("patched position q")
        ax.set_yticks(range(len(self.positions)), [str(q) for q in self.positions])
        fig.colorbar(im, ax=ax, label="flip rate (max over steps)")
        s = self.later_on_earlier(at)
        ax.set_title(title or f"later→earlier {s['later_on_earlier']:.2f}, earlier→later {s['earlier_on_later']:.2f}",
                     fontsize=9)
        return fig


CHANNELS = {"canvas": "hook_embed", "self_cond": "self_cond.hook_logits_in"}


def canvas_flips(model, base_ids: torch.Tensor, source_ids: torch.Tensor, *, steps=None, first_steps: int | None = None,
                 positions=None,
                 channels=("canvas",), canvas: int = 0, eos_id: int | None = None, seed: int = 0,
                 attention_mask=None, source_attention_mask=None, batch_size: int = 64, progress: bool = False,
                 **generation_kwargs) -> CanvasFlips:
    """Patch (resample-ablate) each input-canvas position q at each step from a source run into the base run.

    Runs `dgt_interp.patching.Patching(model, clean=source, corrupted=base)` (both runs replay the same
    sampler noise, so a position that is re-noised in both holds the same random token and the patch
    is a no-op there) and records, per (step k, position q), the base run's emitted tokens.
    `channels`: "canvas" (the token embedding at q: the token the decoder reads) and/or
    "self_cond" (the previous step's logits at q entering the self-conditioning channel; absent at a
    canvas's first step). `steps`: canvas steps (from 0) to patch, None = all both runs reached (or the first
    `first_steps` of them: a cap that needs no run to learn how many steps there are).
    DiffusionGemma only: on the AR twin later positions cannot affect earlier ones (causal attention).
    """
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or not channels:
        raise PhenomenaError(f"unknown channels {unknown or channels!r}; use any of {', '.join(CHANNELS)}")
    p = Patching(model, source_ids, base_ids, seed=seed, attention_mask=source_attention_mask,
                 corrupted_attention_mask=attention_mask, **generation_kwargs)
    if p.kind != "diffusion":
        raise PhenomenaError("canvas patching needs a DiffusionGemma model; on the AR twin later positions cannot "
                             "affect earlier ones (causal attention), so the effect is 0 by construction")
    all_steps = [s for s in check_canvas(p.corrupted, canvas) if s < p.n_steps]
    if steps is not None and first_steps is not None:
        raise PhenomenaError("pass steps= or first_steps=, not both")
    if first_steps is not None and (not isinstance(first_steps, int) or first_steps < 1):
        raise PhenomenaError(f"first_steps must be a positive int, got {first_steps!r}")
    n_first = len(all_steps) if first_steps is None else min(first_steps, len(all_steps))
    ks = list(range(n_first)) if steps is None else [steps] if isinstance(steps, int) else list(steps)
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
    _, base_tokens = p.corrupted.outputs()
    l0 = canvas * length
    base_final = base_tokens[:, l0:l0 + length]
    flips = torch.zeros(len(gsteps), len(qs), p.batch, length, dtype=torch.bool)
    patched = torch.zeros(len(gsteps), len(qs), p.batch, dtype=torch.bool)
    step_flips = torch.zeros_like(flips)
    step_argmax = torch.zeros(flips.shape, dtype=torch.long)
    base_step = p.corrupted.records["argmax_canvas"]  # [S, B, L]
    base_active = p.corrupted.records["active"].bool()  # [S, B]: a stopped row's step argmax is not emitted
    src_in, base_in = p.clean.records["input_canvas"], p.corrupted.records["input_canvas"]
    prompts_differ = (source_ids != base_ids).any(-1).cpu()
    for start, n, traj in p.iter_runs(patches, record=(), batch_size=batch_size, progress=progress):
        toks = traj.output_tokens().view(n, p.batch, -1)
        for c in range(n):
            i, j = cells[start + c]
            flips[i, j] = toks[c, :, l0:l0 + length] != base_final
            s = gsteps[i]
            step_argmax[i, j] = traj.records["argmax_canvas"][s, c * p.batch:(c + 1) * p.batch]  # step s's canvas
            step_flips[i, j] = (step_argmax[i, j] != base_step[s]) & base_active[s][:, None]
    for (i, j) in cells:
        s, q = gsteps[i], qs[j]
        differs = torch.zeros(p.batch, dtype=torch.bool)
        if "canvas" in channels:
            differs |= src_in[s, :, q] != base_in[s, :, q]
        if "self_cond" in channels and bool(p.corrupted.records["has_self_cond"][s].any()):
            differs |= prompts_differ  # the logits differ whenever the prompts do
        patched[i, j] = differs
    mask = answer_mask(base_final, eos_id)
    return CanvasFlips(flips, patched, base_final, mask, gsteps, qs, tuple(channels), p.corrupted, step_flips,
                       step_argmax, p.clean)


__all__ = ["CHANNELS", "CanvasFlips", "canvas_flips"]
