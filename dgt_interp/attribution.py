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

import math

import torch

from dgt_interp.backends.devices import execution_device
from dgt_interp.capturing import CaptureBudgetError, fmt_bytes, plan_capture
from dgt_interp.names import natural_key
from dgt_interp.patching import Patching, PatchingError, call_metric, indices
from dgt_interp.patching.budget import STEP_WORKING_LOGITS, Estimate, check_max_bytes
from dgt_interp.replay import Replayer
from dgt_interp.stats import rank_correlation
from dgt_interp.trajectory import output_steps

UNEMBED = "unembed.hook_in"  # lm_head input: the logits are recomputed from it at the steps the metric reads
# `[batch, canvas, vocab]` float32 tensors the autograd graph keeps per denoising step it spans, backward
# pass included (bench/patch_memory.py --attribution, real vocabulary: 7.0-7.5), rounded up
ATTRIBUTION_GRAPH_LOGITS = 8


def estimate_attribution_bytes(p: Patching, pattern: str = "blocks.*.hook_resid_pre", *, steps=None,
                               checkpoint: bool = False) -> Estimate:
    """The bytes `attribution_patch(p, metric, pattern, steps=steps)` holds at its peak, part by part.

    One graph (`checkpoint=False`): the graph of every step from the first selected one on and one step's
    working set. Per step (`checkpoint=True`, DiffusionGemma): one step's graph, the self-conditioning
    inputs kept as checkpoints (about 2 sqrt(steps) of them) and the gradient of the outputs. Both add the
    live activations of `pattern` with their gradients and clean copies."""
    names = sorted(p.resolve([pattern]), key=natural_key)
    step_idx = indices(steps, p.n_steps, "step", f"both runs reached {p.n_steps} steps")
    ids = p.ids["corrupted"]
    text = p.model.config.get_text_config()
    plan = plan_capture(p.model, ids, names=names, **p.generation_kwargs)
    per_step = ids.shape[0] * (plan.canvas_length if p.kind == "diffusion" else 1) * int(text.vocab_size) * 4
    spanned = p.n_steps - min(step_idx) if step_idx else 0
    acts = {"activations, gradients, clean copies": 4 * sum(plan.bytes_per_name.values()) * len(step_idx)}
    if checkpoint:
        sc_bytes = per_step // 4 * torch.empty((), dtype=p.model.dtype).element_size()
        kept = 2 * math.ceil(math.sqrt(max(1, spanned)))
        return Estimate("for attribution, step by step", {
            "graph of one step": ATTRIBUTION_GRAPH_LOGITS * per_step,
            f"{kept} self-conditioning checkpoints": kept * sc_bytes,
            "output gradient": plan.n_canvases * per_step,
            **acts,
        })
    return Estimate("for attribution", {
        f"graph of {spanned} steps": ATTRIBUTION_GRAPH_LOGITS * spanned * per_step,
        "step working set": STEP_WORKING_LOGITS * per_step,
        **acts,
    })


def attribution_patch(p: Patching, metric, pattern: str = "blocks.*.hook_resid_pre", *, by: str = "pos",
                      steps=None, per_prompt: bool = False, max_bytes: int | None = None,
                      checkpoint: bool | None = None) -> torch.Tensor:
    """Linear estimate of `patched - corrupted` for every cell of `get_act_patch(p, pattern, metric, by=by)`.

    Returns `[step, layer, pos]` (by="pos"), `[step, layer, pos, head]` (by="head") or
    `[step, layer]` (by="layer": all positions patched at once = the sum over positions), averaged
    over the prompt batch (`per_prompt=True`: a trailing batch axis, each prompt's estimate; its
    mean is the default); NaN where the hook does not fire.

    How the gradient is taken (`checkpoint`):
    - one graph (False): one corrupted run recorded for autograd from the first selected site on, and
      one backward pass through every step at once; memory grows with the steps spanned.
    - step by step (True, DiffusionGemma only): the steps are re-run one at a time from the recorded
      canvases (`replay.Replayer`) and the gradient is carried from step to step through the only
      continuous path between them, the self-conditioning logits; their values are recomputed from
      checkpoints every ~sqrt(steps) steps. Memory is one step's graph plus ~2 sqrt(steps)
      `[batch, canvas, vocab]` checkpoints; time is about four decoder passes per step. Same
      gradient (summed in another order).
    - None (default): one graph when `estimate_attribution_bytes` fits `max_bytes`, else step by step.
    Refused before running (`CaptureBudgetError`) when the chosen way does not fit `max_bytes` (None:
    `p`'s budget, or a fraction of the free memory of the model's device). The clean activations are the ones `p` holds.
    """
    if by not in ("pos", "head", "layer"):
        raise PatchingError(f"by={by!r}: use 'pos', 'head' or 'layer'")
    if checkpoint not in (None, True, False):
        raise PatchingError(f"checkpoint={checkpoint!r}: use True (step by step), False (one graph) or None (auto)")
    if checkpoint and p.kind != "diffusion":
        raise PatchingError("checkpoint=True re-runs DiffusionGemma denoising steps; the AR twin takes one graph "
                            "(checkpoint=False or None)")
    names = sorted(p.resolve([pattern]), key=natural_key)
    step_idx = indices(steps, p.n_steps, "step", f"both runs reached {p.n_steps} steps")
    budget = check_max_bytes(p.max_bytes if max_bytes is None else max_bytes, execution_device(p.model))
    estimate = estimate_attribution_bytes(p, pattern, steps=steps, checkpoint=bool(checkpoint))
    if checkpoint is None and estimate.total > budget and p.kind == "diffusion":
        checkpoint = True
        estimate = estimate_attribution_bytes(p, pattern, steps=steps, checkpoint=True)
    if estimate.total > budget:
        raise CaptureBudgetError(f"attribution would hold {estimate.describe()} > max_bytes={fmt_bytes(budget)}; cut it "
                                 "with steps= (the graph spans from the first selected step to the end), fewer "
                                 "max_denoising_steps, a smaller prompt batch, or a larger max_bytes")
    p.need(names, step_idx)
    gradients = _gradients_step_by_step if checkpoint else _gradients_one_graph
    acts, grads = gradients(p, metric, names, step_idx)
    keys = [k for k in acts if p.clean_activation(*k) is not None]

    n_pos = max((p.positions(n, s) for n in names for s in step_idx), default=0)
    n_heads = 0
    if by == "head":
        t = next((acts[k] for k in keys), None)
        if t is None or t.dim() < 4 or p.layout(keys[0][0]) == "flat":
            raise PatchingError(f"{pattern!r} has no head axis ([batch, pos, head, d_head]); use blocks.*.attn.hook_z")
        n_heads = t.shape[2]
    shape = {"pos": (len(step_idx), len(names), n_pos), "head": (len(step_idx), len(names), n_pos, n_heads),
             "layer": (len(step_idx), len(names))}[by]
    out = torch.full(shape + ((p.batch,) if per_prompt else ()), float("nan"))
    # (clean - corrupted) . grad for all (step, layer) tensors of one shape at once
    groups: dict[tuple, list[int]] = {}
    for i, (name, s) in enumerate(keys):
        t = acts[(name, s)]  # grouped by device too: a dispatched model's layers may sit on several
        groups.setdefault((tuple(t.shape), p.layout(name) == "flat", t.device), []).append(i)
    b = p.batch
    for (_, flat, _), idx in groups.items():
        corr = torch.stack([acts[keys[i]] for i in idx])
        clean = torch.stack([p.clean_activation(*keys[i]) for i in idx]).to(corr)
        grad = torch.stack([grads[keys[i]] if grads.get(keys[i]) is not None else torch.zeros_like(acts[keys[i]])
                            for i in idx])
        diff = (clean - corr) * grad  # [K, batch, pos, ...]
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


def _keep(live: dict, name: str, wanted: set[int]):
    """A hook that keeps `name`'s activation in `live` at the wanted steps, as a graph input: the tensor itself
    if an earlier input reaches it, else a fresh leaf the graph starts from."""
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


def _gradients_one_graph(p: Patching, metric, names: list[str], step_idx: list[int]):
    """({(name, step): corrupted activation}, {(name, step): d metric / d activation}) from one corrupted run
    recorded for autograd from the first selected site on and one backward pass."""
    wanted = set(step_idx)
    live: dict[tuple[str, int], torch.Tensor] = {}
    hidden_live: dict[int, torch.Tensor] = {}  # [batch, pos, d] per step: not [batch, pos, vocab] logits

    def unembed(t, hook, step):
        hidden_live[step] = t

    traj = p.capture("corrupted", fwd_hooks=[(n, _keep(live, n, wanted)) for n in names] + [(UNEMBED, unembed)],
                     record=())
    if not torch.equal(traj.sequences, p.corrupted.sequences):
        raise PatchingError("the gradient run diverged from the corrupted run; report this (sampler replay broken)")
    step = getattr(metric, "step", None)
    out_logits, tokens = _output_logits(p, traj, hidden_live, step)
    recorded, _ = p.reference("corrupted", metric).outputs(step)
    _check_rebuilt(out_logits.detach(), recorded)
    value = call_metric(metric, out_logits, tokens.to(out_logits.device)).sum()
    keys = [k for k in live if p.clean_activation(*k) is not None]
    grads = [None] * len(keys)
    if keys and value.requires_grad:  # the one backward pass
        grads = list(torch.autograd.grad(value, [live[k] for k in keys], allow_unused=True))
    return {k: t.detach() for k, t in live.items()}, dict(zip(keys, grads))


def _gradients_step_by_step(p: Patching, metric, names: list[str], step_idx: list[int]):
    """What `_gradients_one_graph` returns, one denoising step's graph at a time (DiffusionGemma).

    The value is a function of the output logits; d value / d outputs is taken once on the recorded
    outputs. Between steps the run is continuous only through the self-conditioning input
    `sc[s+1] = where(finished before s, sc[s], processed_logits[s])` cast to the embeddings' dtype
    (canvases, acceptance and the adaptive stop are replayed as recorded). Going back from each
    canvas's last read step, step s is re-run with its sc input as a graph leaf; one backward pass of
    `value's terms read at s + <d value / d sc[s+1], sc[s+1]>` gives the gradients of step s's sites
    and d value / d sc[s] for step s-1. The sc inputs are recomputed forward from checkpoints."""
    traj = p.corrupted
    replayer = Replayer(traj, p.model, p.masks["corrupted"])
    device = execution_device(p.model)
    sc_dtype = replayer.self_conditioning_dtype
    step = getattr(metric, "step", None)
    recorded, tokens = p.reference("corrupted", metric).outputs(step)
    outputs = recorded.to(device).float().requires_grad_()
    value = call_metric(metric, outputs, tokens.to(device)).sum()
    d_outputs = torch.autograd.grad(value, [outputs], allow_unused=True)[0] if value.requires_grad else None
    del outputs, value
    active, canvas_of = traj.records["active"].bool(), traj.records["canvas"]
    length = traj.meta["canvas_length"]
    canvases = sorted(set(canvas_of.tolist())) if step is None else [int(canvas_of[min(step, len(canvas_of) - 1)])]
    reads: dict[int, list[tuple[int, slice]]] = {}  # step -> [(row, its slice of the outputs' pos axis)]
    for i, pick in enumerate(output_steps("diffusion", active, canvas_of, step)):
        for b, s in enumerate(pick.tolist()):
            reads.setdefault(int(s), []).append((b, slice(i * length, (i + 1) * length)))
    first, wanted = min(step_idx), set(step_idx)
    acts: dict[tuple[str, int], torch.Tensor] = {}
    grads: dict[tuple[str, int], torch.Tensor | None] = {}

    def next_input(s, sc, processed):  # what generate passes to step s + 1
        if sc is not None:
            processed = torch.where(~active[s].to(processed.device)[:, None, None], sc, processed)
        return processed.to(sc_dtype)

    for c in canvases:
        read_steps = [s for s in traj.canvas_steps(c) if s in reads]
        if d_outputs is None or not read_steps or max(read_steps) < first:
            continue
        span = [s for s in traj.canvas_steps(c) if s <= max(read_steps)]
        every = max(1, math.ceil(math.sqrt(len(span))))
        checkpoints, sc = {}, None
        for i, s in enumerate(span[:-1]):
            if i % every == 0:
                checkpoints[i] = sc
            sc = next_input(s, sc, replayer.run(s, [], [], self_conditioning=sc).processed_logits)
        checkpoints.setdefault((len(span) - 1) // every * every, sc)
        d_next = None  # d value / d (the self-conditioning input of the step after the current one)
        for start in reversed(range(0, len(span), every)):
            if span[min(start + every, len(span)) - 1] < first:
                break
            inputs = [checkpoints[start]]
            for s in span[start:start + every][:-1]:
                inputs.append(next_input(s, inputs[-1], replayer.run(s, [], [], self_conditioning=inputs[-1])
                                         .processed_logits))
            for j in reversed(range(len(inputs))):
                s = span[start + j]
                if s < first:
                    break
                sc = inputs[j]
                leaf = sc.detach().requires_grad_() if (sc is not None and s > first) else sc
                live: dict[tuple[str, int], torch.Tensor] = {}
                hooks = [(n, _keep(live, n, wanted)) for n in names] if s in wanted else []
                run = replayer.run(s, [], hooks, self_conditioning=leaf, grad=True)
                # the backward pass starts from this step's outputs with their gradients given (no product
                # tensors): the logits the value reads here, and the self-conditioning input of step s + 1
                # (rows the adaptive stop finished pass theirs on, but nothing read depends on them)
                outs, douts, rebuilt = [], [], None
                if s in reads:
                    rows = [b for b, _ in reads[s]]
                    read = run.logits if rows == list(range(run.logits.shape[0])) else run.logits[rows]
                    outs.append(read)
                    douts.append(torch.stack([d_outputs[b, sl] for b, sl in reads[s]]).to(read.dtype))
                    rebuilt = read.detach()
                if d_next is not None:
                    outs.append(run.processed_logits.to(sc_dtype))
                    douts.append(d_next)
                keys = [k for k in live if live[k].requires_grad]
                ins = [live[k] for k in keys] + ([leaf] if leaf is not None and leaf.requires_grad else [])
                got = [None] * len(ins)
                if ins and any(o.requires_grad for o in outs):
                    got = torch.autograd.grad(outs, ins, grad_outputs=douts, allow_unused=True)
                del run, outs, douts
                if rebuilt is not None:  # after the graph is freed
                    _check_rebuilt(rebuilt, torch.stack([recorded[b, sl] for b, sl in reads[s]]))
                for k, g in zip(keys, got):
                    acts[k], grads[k] = live[k].detach(), g
                d_next = got[-1] if len(ins) > len(keys) else None
                del live, rebuilt
    for s in step_idx:  # sites no read output depends on: a zero gradient, as in the one graph
        for n in names:
            if (n, s) not in acts and p.clean_activation(n, s) is not None:
                acts[(n, s)], grads[(n, s)] = p.clean_activation(n, s) * 0, None
    return acts, grads


def _check_rebuilt(rebuilt: torch.Tensor, recorded: torch.Tensor) -> None:
    """The logits a gradient run rebuilt equal the corrupted run's recorded outputs (else the gradient is of
    another run)."""
    if not torch.allclose(rebuilt.float().cpu(), recorded.float().cpu(), atol=1e-4, rtol=1e-4):
        raise PatchingError("rebuilt logits differ from the recorded outputs (replay or soft-cap changed?); "
                            "report this")


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
