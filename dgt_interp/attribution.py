"""Attribution patching across denoising steps: a gradient estimate of every (step, layer, pos) patch.

Activation patching needs one run per site. Attribution patching (Nanda, "Attribution Patching",
2023; Syed et al. 2023) estimates all of them from one clean run, one corrupted run and one
backward pass, by a first-order Taylor expansion of the metric around the corrupted run:

    effect(site) ~= (clean_act[site] - corrupted_act[site]) . d metric / d act[site]   (at the corrupted run)

summed over the hidden dimension (and over positions for a whole-layer patch). The result is in the
metric's units and estimates `patched - corrupted`, the quantity `get_act_patch_*` minus the
corrupted baseline measures exactly.

Across steps. The corrupted run is the real HF `generate` (through `capture`, replaying the same
noise as `Patching`), with autograd switched on from the first decoder pass: the gradient of the
final metric reaches step s through every differentiable path, in particular the self-conditioning
channel (step s's processed logits -> softmax -> soft embedding -> step s+1's decoder) and, on the
AR twin, the KV cache. What it does not see: sampling, acceptance, re-noising and argmax are
discrete, so the sampled and accepted canvases are held fixed (replayed as in the corrupted run).
A patch that would flip a sampled or accepted token, or the step at which the run stops, changes
the real run in a way the linear estimate misses; so do large, non-linear changes (softmax
saturation, the logit soft-cap). Compare with the exact sweep on a few cells (bench/patching.py).

    >>> est = attribution_patch(p, metric, "blocks.*.hook_resid_pre")     # [step, layer, pos]
"""

from __future__ import annotations

import torch

from dgt_interp.names import natural_key
from dgt_interp.patching import Patching, PatchingError, _call_metric, _indices, select_outputs

EMBED = "embed.hook_out"  # the decoder's token embeddings: the first hook of every decoder pass
UNEMBED = "unembed.hook_out"  # lm_head output, before the soft-cap


def attribution_patch(p: Patching, metric, pattern: str = "blocks.*.hook_resid_pre", *, by: str = "pos",
                      steps=None) -> torch.Tensor:
    """Linear estimate of `patched - corrupted` for every cell of `get_act_patch(p, pattern, metric, by=by)`.

    Returns `[step, layer, pos]` (by="pos"), `[step, layer, pos, head]` (by="head") or
    `[step, layer]` (by="layer": all positions patched at once = the sum over positions), averaged
    over the prompt batch; NaN where the hook does not fire. One corrupted run with gradients
    (plus the clean run's activations, which `p` holds).
    """
    if by not in ("pos", "head", "layer"):
        raise PatchingError(f"by={by!r}: use 'pos', 'head' or 'layer'")
    names = sorted(p.resolve([pattern]), key=natural_key)
    p.need(names)
    step_idx = _indices(steps, p.n_steps, "step", f"both runs reached {p.n_steps} steps")
    live: dict[tuple[str, int], torch.Tensor] = {}
    logits_live: dict[int, torch.Tensor] = {}

    def root(t, hook, step):
        torch.set_grad_enabled(True)  # generate runs under no_grad; restored when it returns
        return t.detach().requires_grad_()

    def keep(name):
        def fn(t, hook, step):
            live[(name, step)] = t

        return fn

    def unembed(t, hook, step):
        logits_live[step] = t

    hooks = [(EMBED, root)] + [(n, keep(n)) for n in names] + [(UNEMBED, unembed)]
    traj = p._capture("corrupted", fwd_hooks=hooks)
    if not torch.equal(traj.sequences, p.corrupted.sequences):
        raise PatchingError("the gradient run diverged from the corrupted run; report this (sampler replay broken)")
    logits = _stack_logits(p, traj, logits_live)
    if not torch.allclose(logits.detach().cpu(), traj["logits"], atol=1e-4, rtol=1e-4):
        raise PatchingError("rebuilt logits differ from the recorded ones (soft-cap changed?); report this")
    out_logits, tokens = select_outputs(traj.kind, logits, traj.argmax_canvas.to(logits.device),
                                        traj.active.to(logits.device), traj.canvas, getattr(metric, "step", None))
    value = _call_metric(metric, out_logits, tokens).sum()
    keys = [k for k in live if k[1] in step_idx and live[k].requires_grad]
    grads = torch.autograd.grad(value, [live[k] for k in keys], allow_unused=True)

    n_pos = max((p.positions(n, s) for n in names for s in step_idx), default=0)
    n_heads = 0
    if by == "head":
        t = next((live[k] for k in keys), None)
        if t is None or t.dim() < 4 or p._layout(keys[0][0]) == "flat":
            raise PatchingError(f"{pattern!r} has no head axis ([batch, pos, head, d_head]); use blocks.*.attn.hook_z")
        n_heads = t.shape[2]
    shape = {"pos": (len(step_idx), len(names), n_pos), "head": (len(step_idx), len(names), n_pos, n_heads),
             "layer": (len(step_idx), len(names))}[by]
    out = torch.full(shape, float("nan"))
    b = p.batch
    for (name, s), g in zip(keys, grads):
        clean = p._acts.get((name, s))
        if clean is None:
            continue
        corr = live[(name, s)].detach()
        g = torch.zeros_like(corr) if g is None else g
        diff = (clean.to(corr.dtype) - corr) * g
        if p._layout(name) == "flat":
            diff = diff.view(b, -1, *diff.shape[1:])
        keep_dims = 3 if by == "head" else 2
        eff = diff.float().sum(dim=tuple(range(keep_dims, diff.dim()))).mean(0).cpu()  # [pos(, head)]
        i, j = step_idx.index(s), names.index(name)
        if by == "layer":
            out[i, j] = eff.sum()
        else:
            out[i, j, :eff.shape[0]] = eff
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
    length = traj["logits"].shape[2]
    cols = [softcap(logits_live[s][:, -1]) for s in range(n_steps)]
    rows = []
    for s in range(n_steps):
        pad = torch.zeros((cols[0].shape[0], length - s - 1, cols[0].shape[-1]), device=cols[0].device)
        rows.append(torch.cat([torch.stack(cols[:s + 1], 1), pad], 1))
    return torch.stack(rows)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two same-shape tensors over the cells finite in both (ties: average rank)."""
    ok = torch.isfinite(a) & torch.isfinite(b)
    x, y = a[ok].double(), b[ok].double()
    if x.numel() < 2:
        raise PatchingError("need at least two finite cells to rank-correlate")

    def ranks(v):
        order = torch.argsort(v)
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=v.dtype)
        for u in torch.unique(v):  # average ranks of ties
            tie = v == u
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


__all__ = ["attribution_patch", "rank_correlation"]
