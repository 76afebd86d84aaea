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

Memory. The one backward pass needs the autograd graph of every step from the first selected one
on: on DiffusionGemma each step keeps a few `[batch, canvas, vocab]` float32 tensors (the soft-cap,
the temperature-scaled logits and the softmax the self-conditioning channel reads;
`ATTRIBUTION_GRAPH_LOGITS` per step, measured at the released vocabulary), so attribution grows with
the steps it spans; `estimate_attribution_bytes` says how much, and `attribution_patch` refuses
(`CaptureBudgetError`, one line) a run over `max_bytes`. The model's logits are rebuilt from the
unembedding input at the steps the metric reads only: no step's full-vocabulary logits are held
for the backward pass besides what the graph itself needs.

    >>> est = attribution_patch(p, metric, "blocks.*.hook_resid_pre")     # [step, layer, pos]
"""

from __future__ import annotations

import torch

from dgt_interp.capturing import CaptureBudgetError, fmt_bytes, plan_capture
from dgt_interp.names import natural_key
from dgt_interp.patching import Patching, PatchingError, call_metric, indices
from dgt_interp.patching.budget import STEP_WORKING_LOGITS, Estimate, check_max_bytes
from dgt_interp.stats import rank_correlation
from dgt_interp.trajectory import output_steps

UNEMBED = "unembed.hook_in"  # lm_head input: the logits are recomputed from it at the steps the metric reads
# `[batch, canvas, vocab]` float32 tensors the autograd graph keeps per denoising step it spans, backward
# pass included (bench/patch_memory.py --attribution, real vocabulary: 7.0-7.5), rounded up
ATTRIBUTION_GRAPH_LOGITS = 8


def estimate_attribution_bytes(p: Patching, pattern: str = "blocks.*.hook_resid_pre", *, steps=None) -> Estimate:
    """The bytes `attribution_patch(p, metric, pattern, steps=steps)` holds at its peak, part by part: the
    graph of every step from the first selected one on, one step's working set, and the live
    activations of `pattern` with their gradients and clean copies."""
    names = sorted(p.resolve([pattern]), key=natural_key)
    step_idx = indices(steps, p.n_steps, "step", f"both runs reached {p.n_steps} steps")
    ids = p.ids["corrupted"]
    text = p.model.config.get_text_config()
    plan = plan_capture(p.model, ids, names=names, **p.generation_kwargs)
    per_step = ids.shape[0] * (plan.canvas_length if p.kind == "diffusion" else 1) * int(text.vocab_size) * 4
    spanned = p.n_steps - min(step_idx) if step_idx else 0
    acts = sum(plan.bytes_per_name.values()) * len(step_idx)
    return Estimate("for attribution", {
        f"graph of {spanned} steps": ATTRIBUTION_GRAPH_LOGITS * spanned * per_step,
        "step working set": STEP_WORKING_LOGITS * per_step,
        "activations, gradients, clean copies": 4 * acts,
    })


def attribution_patch(p: Patching, metric, pattern: str = "blocks.*.hook_resid_pre", *, by: str = "pos",
                      steps=None, per_prompt: bool = False, max_bytes: int | None = None) -> torch.Tensor:
    """Linear estimate of `patched - corrupted` for every cell of `get_act_patch(p, pattern, metric, by=by)`.

    Returns `[step, layer, pos]` (by="pos"), `[step, layer, pos, head]` (by="head") or
    `[step, layer]` (by="layer": all positions patched at once = the sum over positions), averaged
    over the prompt batch (`per_prompt=True`: a trailing batch axis, each prompt's estimate; its
    mean is the default); NaN where the hook does not fire. Cost: one corrupted run, recorded for
    autograd only from the first selected site on, and one backward pass for every cell at once
    (the clean activations are the ones `p` holds). Refused before running (`CaptureBudgetError`) when
    `estimate_attribution_bytes` exceeds `max_bytes` (None: `p`'s budget, or a fraction of the free RAM).
    """
    if by not in ("pos", "head", "layer"):
        raise PatchingError(f"by={by!r}: use 'pos', 'head' or 'layer'")
    names = sorted(p.resolve([pattern]), key=natural_key)
    step_idx = indices(steps, p.n_steps, "step", f"both runs reached {p.n_steps} steps")
    budget = check_max_bytes(p.max_bytes if max_bytes is None else max_bytes)
    estimate = estimate_attribution_bytes(p, pattern, steps=steps)
    if estimate.total > budget:
        raise CaptureBudgetError(f"attribution would hold {estimate.describe()} > max_bytes={fmt_bytes(budget)}; cut it "
                                 "with steps= (the graph spans from the first selected step to the end), fewer "
                                 "max_denoising_steps, a smaller prompt batch, or a larger max_bytes")
    p.need(names, step_idx)
    wanted = set(step_idx)
    live: dict[tuple[str, int], torch.Tensor] = {}
    hidden_live: dict[int, torch.Tensor] = {}  # [batch, pos, d] per step: not [batch, pos, vocab] logits

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
        hidden_live[step] = t

    traj = p.capture("corrupted", fwd_hooks=[(n, keep(n)) for n in names] + [(UNEMBED, unembed)], record=())
    if not torch.equal(traj.sequences, p.corrupted.sequences):
        raise PatchingError("the gradient run diverged from the corrupted run; report this (sampler replay broken)")
    step = getattr(metric, "step", None)
    out_logits, tokens = _output_logits(p, traj, hidden_live, step)
    recorded, _ = p.reference("corrupted", metric).outputs(step)
    if not torch.allclose(out_logits.detach().cpu(), recorded, atol=1e-4, rtol=1e-4):
        raise PatchingError("rebuilt logits differ from the recorded ones (soft-cap changed?); report this")
    value = call_metric(metric, out_logits, tokens.to(out_logits.device)).sum()
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


def _output_logits(p: Patching, traj, hidden_live: dict[int, torch.Tensor], step: int | None):
    """(logits `[batch, pos, vocab]` with their graph, tokens) = `traj.outputs(step)` rebuilt from the live
    unembedding inputs: the model's own `lm_head` and the soft-cap run again at the steps the outputs read
    only (same shapes, same ops: the same numbers), so no step's full-vocabulary logits are held."""
    cap = p.model.config.get_text_config().final_logit_softcapping

    def softcap(h):
        x = p.model.lm_head(h).float()
        return torch.tanh(x / cap) * cap if cap else x

    picks = output_steps(traj.kind, traj.active, traj.canvas, step)
    tokens = traj.output_tokens(step)
    if traj.kind == "diffusion":
        capped = {s: softcap(hidden_live[s]) for s in sorted({int(s) for pick in picks for s in pick})}
        rows = torch.arange(traj.active.shape[1])
        per_canvas = [torch.stack([capped[int(s)][b] for b, s in zip(rows.tolist(), pick)]) for pick in picks]
        return torch.cat(per_canvas, 1), tokens
    # AR: step s holds generated tokens 0..s (the newest from each step's last position), zeros after
    s = int(picks[0][0])
    length = p.corrupted.records["input_canvas"].shape[-1]
    cols = [softcap(hidden_live[i])[:, -1] for i in range(s + 1)]
    pad = torch.zeros((cols[0].shape[0], length - s - 1, cols[0].shape[-1]), device=cols[0].device)
    return torch.cat([torch.stack(cols, 1), pad], 1), tokens


__all__ = ["attribution_patch", "estimate_attribution_bytes", "ATTRIBUTION_GRAPH_LOGITS", "rank_correlation"]
