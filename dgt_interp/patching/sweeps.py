"""Sweeps with a step axis: patch every (step, layer[, pos][, head]) cell of a hook alone.

The TransformerLens `patching.get_act_patch_*` family with a denoising-step axis first:
`get_act_patch_resid_pre(p, metric)` -> `[step, layer, pos]`, averaged over the prompt batch
(`per_prompt=True`: a trailing batch axis, `[step, layer, pos, batch]`, whose mean is the default), NaN
where the hook does not fire (self-conditioning at a canvas's first step, AR positions past the one
a step processes). Cells run batched along the batch axis (`Patching.iter_patches`).

    >>> p = Patching(model, clean_ids, corrupted_ids, seed=0)
    >>> metric = LogitDiff(pos=0, correct=clean_tok, wrong=corrupted_tok)
    >>> grid = get_act_patch_resid_pre(p, metric)          # [step, layer, pos]
    >>> normalise(grid, p.clean_metric(metric), p.corrupted_metric(metric))
"""

from __future__ import annotations

import torch

from dgt_interp.patching.experiment import Patching, layer_names
from dgt_interp.patching.sites import Index, PatchingError, Site, indices


def get_act_patch(p: Patching, pattern: str, metric, *, by: str = "pos", steps: Index = None, layers: Index = None,
                  positions: Index = None, batch_size: int | None = 64, max_bytes: int | None = None,
                  progress: bool = False, per_prompt: bool = False) -> torch.Tensor:
    """Generic sweep: patch each (step, layer[, pos][, head]) cell of hook `pattern` alone.

    `pattern`: one hook name or a glob with `*` for the layer (`"blocks.*.hook_resid_pre"`).
    `by`: "pos" -> `[step, layer, pos]`; "head" -> `[step, layer, pos, head]` (per position and
    head; needs a head axis); "layer" -> `[step, layer]` (all positions at once). A name without a
    layer gives a layer axis of length 1. NaN marks cells where the hook does not fire. Memory: the clean
    activations are kept at the swept steps only; patched copies run in chunks of at most `batch_size`
    that fit `max_bytes` (`Patching.iter_runs`, `budget.plan_patching`), keeping only what the metric reads.
    `per_prompt=True` adds a trailing batch axis (each prompt's value; `.mean(-1)` is the default result).
    """
    if by not in ("pos", "head", "layer"):
        raise PatchingError(f"by={by!r}: use 'pos', 'head' or 'layer'")
    names = layer_names(p, pattern)
    layer_idx = indices(layers, len(names), "layer", f"{pattern!r} matches {len(names)} names")
    names = [names[i] for i in layer_idx]
    step_idx = indices(steps, p.n_steps, "step", f"both runs reached {p.n_steps} steps")
    p.need(names, step_idx)
    max_pos = max((p.positions(n, s) for n in names for s in step_idx), default=0)
    n_heads = 0
    if by == "head":
        t = next((p.clean_activation(n, s) for n in names for s in step_idx if p.clean_activation(n, s) is not None), None)
        if t is None or t.dim() < 4 or p.layout(names[0]) == "flat":
            raise PatchingError(f"{pattern!r} has no head axis ([batch, pos, head, d_head]); use "
                                "blocks.*.attn.hook_z for per-head patching")
        n_heads = t.shape[2]
    cells, patches = [], []
    for i, s in enumerate(step_idx):
        for j, name in enumerate(names):
            n_pos = p.positions(name, s)
            if n_pos == 0:
                continue
            if by == "layer":
                cells.append((i, j))
                patches.append(Site(name, s))
                continue
            for q in indices(positions, max_pos, "position", f"at most {max_pos} positions"):
                if q >= n_pos:
                    continue
                if by == "pos":
                    cells.append((i, j, q))
                    patches.append(Site(name, s, q))
                else:
                    for h in range(n_heads):
                        cells.append((i, j, q, h))
                        patches.append(Site(name, s, q, h))
    shape = {"layer": (len(step_idx), len(names)), "pos": (len(step_idx), len(names), max_pos),
             "head": (len(step_idx), len(names), max_pos, n_heads)}[by]
    out = torch.full(shape + ((p.batch,) if per_prompt else ()), float("nan"))
    desc = f"patched runs, {pattern} by {by}"  # what the progress bar counts
    for start, values in p.iter_patches(patches, metric, batch_size=batch_size, max_bytes=max_bytes, progress=progress,
                                        per_prompt=per_prompt, desc=desc):
        for c, v in zip(cells[start:start + len(values)], values):
            out[c] = v
    if by != "layer" and positions is not None:
        keep = indices(positions, max_pos, "position", "")
        out = out[:, :, keep]
    return out


def get_act_patch_resid_pre(p: Patching, metric, **kw) -> torch.Tensor:
    """Patch the residual stream at the start of each block, per (step, layer, pos). `[step, layer, pos]`."""
    return get_act_patch(p, "blocks.*.hook_resid_pre", metric, **kw)


def get_act_patch_resid_post(p: Patching, metric, **kw) -> torch.Tensor:
    """Patch the residual stream at the end of each block. `[step, layer, pos]`."""
    return get_act_patch(p, "blocks.*.hook_resid_post", metric, **kw)


def get_act_patch_attn_out(p: Patching, metric, **kw) -> torch.Tensor:
    """Patch each attention layer's output. `[step, layer, pos]`."""
    return get_act_patch(p, "blocks.*.hook_attn_out", metric, **kw)


def get_act_patch_mlp_out(p: Patching, metric, **kw) -> torch.Tensor:
    """Patch each MLP (MoE) layer's output. `[step, layer, pos]`."""
    return get_act_patch(p, "blocks.*.hook_mlp_out", metric, **kw)


def get_act_patch_attn_head_out_by_pos(p: Patching, metric, **kw) -> torch.Tensor:
    """Patch each head's output (`attn.hook_z`) per position. `[step, layer, pos, head]`."""
    return get_act_patch(p, "blocks.*.attn.hook_z", metric, by="head", **kw)


def get_act_patch_self_cond(p: Patching, metric, *, by_pos: bool = True, name: str = "self_cond.hook_logits_in",
                            **kw) -> torch.Tensor:
    """Patch the self-conditioning channel at each step (whole canvas or per position).

    `name`: `self_cond.hook_logits_in` (the previous step's processed logits) or
    `self_cond.hook_signal` (what the channel adds to the embeddings). `[step, pos]` (by_pos) or
    `[step]`; NaN at a canvas's first step (no channel there).
    """
    _require_diffusion(p, "self-conditioning")
    out = get_act_patch(p, name, metric, by="pos" if by_pos else "layer", **kw)
    return out[:, 0]


def get_act_patch_canvas(p: Patching, metric, *, by_pos: bool = True, **kw) -> torch.Tensor:
    """Patch the input canvas tokens at each step (whole or per position) via their embeddings.

    `[step, pos]` (by_pos) or `[step]`.
    """
    _require_diffusion(p, "canvas")
    out = get_act_patch(p, "hook_embed", metric, by="pos" if by_pos else "layer", **kw)
    return out[:, 0]


def _require_diffusion(p: Patching, what: str) -> None:
    if p.kind != "diffusion":
        raise PatchingError(f"{what} patching needs a DiffusionGemma model; the AR twin has no such channel")


__all__ = ["get_act_patch", "get_act_patch_resid_pre", "get_act_patch_resid_post", "get_act_patch_attn_out",
           "get_act_patch_mlp_out", "get_act_patch_attn_head_out_by_pos", "get_act_patch_self_cond",
           "get_act_patch_canvas"]
