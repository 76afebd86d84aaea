"""Attribution patching across denoising steps: a gradient estimate of every (step, layer, pos) patch.

Activation patching needs one run per site. Attribution patching (Nanda, "Attribution Patching",
2023; Syed et al. 2023) estimates all of them from one clean run, one corrupted run and one
backward pass, by a first-order Taylor expansion of the metric around the corrupted run:

    effect(site) ~= (clean_act[site] - corrupted_act[site]) . d metric / d act[site]   (at the corrupted run)

summed over the hidden dimension (and over positions for a whole-layer patch). The result is in the
metric's units and estimates `patched - corrupted`, the quantity `get_act_patch_*` minus the
corrupted baseline measures exactly.

Across steps. The corrupted run is the real HF `generate` (through `capture`, replaying the same
noise as `Patching`), recorded for autograd from the first selected site on (earlier computation
cannot depend on any site); one backward pass then gives d metric / d act for every site at once,
and (clean - corrupted) . grad is one vectorised product per group of same-shape tensors. The
gradient of the final metric reaches step s through every differentiable path, in particular the
self-conditioning channel (step s's processed logits -> softmax -> soft embedding -> step s+1's
decoder) and, on the AR twin, the KV cache. What it does not see: sampling, acceptance,
re-noising, argmax and MoE routing are discrete, so they are held fixed (replayed as in the
corrupted run). A patch that would flip a sampled or accepted token, an expert choice, or the step
at which the run stops (adaptive stopping: a flipped argmax makes the run go on, and later steps
can undo the patch) changes the real run in a way the linear estimate misses; so do large,
non-linear changes (softmax saturation, the logit soft-cap). Compare with the exact sweep on a few
cells (bench/patching.py).

    >>> est = attribution_patch(p, metric, "blocks.*.hook_resid_pre")     # [step, layer, pos]
"""

from __future__ import annotations

import torch

from dgt_interp.names import natural_key
from dgt_interp.patching import Patching, PatchingError, call_metric, indices
from dgt_interp.stats import rank_correlation
from dgt_interp.trajectory import select_outputs

UNEMBED = "unembed.hook_out"  # lm_head output, before the soft-cap


def attribution_patch(p: Patching, metric, pattern: str = "blocks.*.hook_resid_pre", *, by: str = "pos",
                      steps=None, per_prompt: bool = False) -> torch.Tensor:
    """Linear estimate of `patched - corrupted` for every cell of `get_act_patch(p, pattern, metric, by=by)`.

    Returns `[step, layer, pos]` (by="pos"), `[step, layer, pos, head]` (by="head") or
    `[step, layer]` (by="layer": all positions patched at once = the sum over positions), averaged
    over the prompt batch (`per_prompt=True`: a trailing batch axis, each prompt's estimate; its
    mean is the default); NaN where the hook does not fire. Cost: one corrupted run, recorded for
    autograd only from the first selected site on, and one backward pass for every cell at once
    (the clean activations are the ones `p` holds).
    """
    if by not in ("pos", "head", "layer"):
        raise PatchingError(f"by={by!r}: use 'pos', 'head' or 'layer'")
    names = sorted(p.resolve([pattern]), key=natural_key)
    p.need(names)
    step_idx = indices(steps, p.n_steps, "step", f"both runs reached {p.n_steps} steps")
    wanted = set(step_idx)
    live: dict[tuple[str, int], torch.Tensor] = {}
    logits_live: dict[int, torch.Tensor] = {}

    def keep(name):
        def fn(t, hook, step):
            if step not in wanted:
                return None
            if t.requires_grad:  # an earlier site reaches it: already in the graph
                live[(name, step)] = t
                return None
            # the first site (or one no earlier site reaches): the graph starts here. generate runs
            # under no_grad; its decorator restores that when it returns
            torch.set_grad_enabled(True)
            live[(name, step)] = t = t.detach().requires_grad_()
            return t

        return fn

    def unembed(t, hook, step):
        logits_live[step] = t

    traj = p.capture("corrupted", fwd_hooks=[(n, keep(n)) for n in names] + [(UNEMBED, unembed)], record=())
    if not torch.equal(traj.sequences, p.corrupted.sequences):
        raise PatchingError("the gradient run diverged from the corrupted run; report this (sampler replay broken)")
    logits = _stack_logits(p, traj, logits_live)
    if not torch.allclose(logits.detach().cpu(), p.corrupted["logits"], atol=1e-4, rtol=1e-4):
        raise PatchingError("rebuilt logits differ from the recorded ones (soft-cap changed?); report this")
    out_logits, tokens = select_outputs(traj.kind, logits, traj.argmax_canvas.to(logits.device),
                                        traj.active.to(logits.device), traj.canvas, getattr(metric, "step", None))
    value = call_metric(metric, out_logits, tokens).sum()
    keys = [k for k in live if p.clean_activation(*k) is not None]
    grads = [None] * len(keys)
    if keys and value.requires_grad:  # the one backward pass
        grads = list(torch.autograd.grad(value, [live[k] for k in keys], allow_unused=True))
    grads = [torch.zeros_like(live[k]) if g is None else g for k, g in zip(keys, grads)]

    n_pos = max((p.positions(n, s) for n in names for s in step_idx), default=0)
    n_heads = 0
    if by == "head":
        t = next((live[k] for k in keys), None)
        if t is None or t.dim() < 4 or p.layout(keys[0][0]) == "flat":
            raise PatchingError(f"{pattern!r} has no head axis ([batch, pos, head, d_head]); use blocks.*.attn.hook_z")
        n_heads = t.shape[2]
    shape = {"pos": (len(step_idx), len(names), n_pos), "head": (len(step_idx), len(names), n_pos, n_heads),
             "layer": (len(step_idx), len(names))}[by]
    out = torch.full(shape + ((p.batch,) if per_prompt else ()), float("nan"))
    # (clean - corrupted) . grad for all (step, layer) tensors of one shape at once
    groups: dict[tuple, list[int]] = {}
    for i, (name, s) in enumerate(keys):
        t = live[(name, s)]  # grouped by device too: a dispatched model's layers may sit on several
        groups.setdefault((tuple(t.shape), p.layout(name) == "flat", t.device), []).append(i)
    b = p.batch
    for (_, flat, _), idx in groups.items():
        corr = torch.stack([live[keys[i]].detach() for i in idx])
        clean = torch.stack([p.clean_activation(*keys[i]) for i in idx]).to(corr)
        diff = (clean - corr) * torch.stack([grads[i] for i in idx])  # [K, batch, pos, ...]
        if flat:  # [K, rows * pos, ...] -> [K, rows, pos, ...]
            diff = diff.view(len(idx), b, -1, *diff.shape[2:])
        rest = tuple(range(4 if by == "head" else 3, diff.dim()))
        eff = (diff.float().sum(dim=rest) if rest else diff.float()).cpu()  # [K, batch, pos(, head)]
        eff = eff.movedim(1, -1) if per_prompt else eff.mean(1)  # [K, pos(, head)(, batch)]
        rows = torch.tensor([step_idx.index(keys[i][1]) for i in idx])
        cols = torch.tensor([names.index(keys[i][0]) for i in idx])
        if by == "layer":
            out[rows, cols] = eff.sum(1)
        else:
            out[rows, cols, :eff.shape[1]] = eff
    return out


def _stack_logits(p: Patching, traj, logits_live: dict[int, torch.Tensor]) -> torch.Tensor:
    """`[S, batch, pos, vocab]` logits with their graph, as the Trajectory lays them out."""
    cap = p.model.config.get_text_config().final_logit_softcapping

    def softcap(x):
        x = x.float()
        return torch.tanh(x / cap) * cap if cap else x

    n_steps = traj.n_steps
    if traj.kind == "diffusion":
        return torch.stack([softcap(logits_live[s]) for s in range(n_steps)])
    # AR: step s holds generated tokens 0..s (the newest from this step's last position), zeros after
    length = p.corrupted["logits"].shape[2]
    cols = [softcap(logits_live[s][:, -1]) for s in range(n_steps)]
    rows = []
    for s in range(n_steps):
        pad = torch.zeros((cols[0].shape[0], length - s - 1, cols[0].shape[-1]), device=cols[0].device)
        rows.append(torch.cat([torch.stack(cols[:s + 1], 1), pad], 1))
    return torch.stack(rows)


__all__ = ["attribution_patch", "rank_correlation"]
