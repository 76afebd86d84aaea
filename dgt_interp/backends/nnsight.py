"""nnsight backend: the same capture, with activations read through nnsight instead of TL hooks.

nnsight traces the bridged twin's hook-point modules (`NNsight` over a `ModuleList` of the points the
names read) over a function that calls the real `generate` of the twin;
`tracer.cache(modules=...)` records each hook-point module's output once per call, i.e. once per
denoising step (AR: once per generated token). The per-step canvases come from the same recording
sampler as the TL path, and the cached outputs go through the same `_Recorder.store`, so the tensors
are identical to `backend="tl"` (tested).

nnsight 0.8.1 notes: `NNsight(model).generate(...)` is not a tracing context for DiffusionGemma, so we
use `trace(..., fn=<function calling generate>)`; its per-call cache avoids `tracer.iter[:T]`, which
needs the step count in advance (adaptive stopping makes it unknown) and silently skips code after an
unbounded loop. `self_cond.hook_logits_in` does not fire at a canvas's first step; its calls are
mapped to the steps that had self-conditioning logits. A hook point with a TL hook conversion (the
attention's `hook_q/k/v/z`, split into heads) hands TL hooks the converted tensor but nnsight the module's
raw output: the conversion is applied here, so both backends give `[batch, pos, head, d_head]`.
"""

from __future__ import annotations

import torch
from nnsight import NNsight


def _wrapped(bridged, names: list[str]):
    """(nnsight wrapper, {name: index of its hook point}) for `names`, built once per twin and name set.

    The wrapper's root is a `ModuleList` of just the hook-point modules those names read, not the
    whole bridge: nnsight installs its controller as the forward of every module it wraps (for good),
    and each one costs a few Python calls per module call; the points are all a capture reads."""
    key = ("nnsight", tuple(names))
    if key not in bridged.extras:
        hook_dict = bridged.hook_points
        points: dict[int, torch.nn.Module] = {}  # aliases of one point share its index
        for n in names:
            points.setdefault(id(hook_dict[n]), hook_dict[n])
        order = list(points)
        index = {n: order.index(id(hook_dict[n])) for n in names}
        bridged.extras[key] = (NNsight(torch.nn.ModuleList(points.values())), index)
    return bridged.extras[key]


def run_with_nnsight(bridged, run, input_ids: torch.Tensor, names: list[str], rec):
    """Run `run(input_ids)` under an nnsight trace of the hook points of `names` on `bridged` (a twin
    of its own: `bridge_for(model, level, "nnsight")`), feeding their outputs to `rec` per step."""
    if not names:  # nothing for nnsight to read
        sequences = run(input_ids)
        for s in range(rec.records()["cur_step"].shape[0]):
            rec.flush(s)
        return sequences
    wrapped, index = _wrapped(bridged, names)
    result = {}

    def fn(input_ids):
        result["sequences"] = run(input_ids)
        return result["sequences"]

    with wrapped.trace(input_ids, fn=fn) as tracer:
        cache = tracer.cache(modules=[wrapped[i] for i in sorted(set(index.values()))])
    records = rec.records()
    n_steps = records["cur_step"].shape[0]
    with_sc = records["has_self_cond"].any(-1).tolist() if n_steps else []
    per_name = {}
    for n in names:
        outs = cache[f"model.{index[n]}"].output
        if isinstance(outs, torch.Tensor):  # nnsight returns one call's output bare, not as a list of one
            outs = [outs]
        if n.endswith("self_cond.hook_logits_in"):
            steps = [s for s in range(n_steps) if with_sc[s]]
        else:
            steps = list(range(n_steps))
        if len(outs) != len(steps):
            raise RuntimeError(f"nnsight recorded {len(outs)} calls of {n!r} for {len(steps)} steps; use backend='tl'")
        # what a TL hook at this point sees: the point's hook conversion applied to the module's output (e.g.
        # q/k/v/z split into heads, [batch, pos, head, d_head]); nnsight reads the raw, flat output
        conversion = getattr(bridged.hook_points[n], "hook_conversion", None)
        if conversion is not None:
            outs = [conversion.convert(o) for o in outs]
        per_name[n] = dict(zip(steps, outs))
    for s in range(n_steps):
        for n in names:
            if s in per_name[n]:
                rec.store(n, per_name[n][s], s)
        rec.flush(s)
    return result["sequences"]
