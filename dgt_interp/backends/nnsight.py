"""nnsight backend: the same capture, with activations read through nnsight instead of TL hooks.

nnsight traces the bridged twin (`NNsight(bridge)`) over a function that calls the real `generate`;
`tracer.cache(modules=...)` records each hook-point module's output once per call, i.e. once per
denoising step (AR: once per generated token). The per-step canvases come from the same recording
sampler as the TL path, and the cached outputs go through the same `_Recorder.store`, so the tensors
are identical to `backend="tl"` (tested).

nnsight 0.8.1 notes: `NNsight(model).generate(...)` is not a tracing context for DiffusionGemma, so we
use `trace(..., fn=<function calling generate>)`; its per-call cache avoids `tracer.iter[:T]`, which
needs the step count in advance (adaptive stopping makes it unknown) and silently skips code after an
unbounded loop. `self_cond.hook_logits_in` does not fire at a canvas's first step; its calls are
mapped to the steps that had self-conditioning logits.
"""

from __future__ import annotations

import torch
from nnsight import NNsight


def _envoy(root, path: str):
    env = root
    for part in path.split("."):
        env = env[int(part)] if part.isdigit() else getattr(env, part)
    return env


def run_with_nnsight(bridge, run, input_ids: torch.Tensor, names: list[str], rec):
    """Run `run(input_ids)` under an nnsight trace of `bridge`, feeding hook outputs to `rec` per step."""
    paths = {id(m): p for p, m in bridge.named_modules()}
    points = {n: bridge.hook_dict[n] for n in names}
    model = NNsight(bridge)
    envoys = {n: _envoy(model, paths[id(p)]) for n, p in points.items()}
    unique = list({id(e): e for e in envoys.values()}.values())
    result = {}

    def fn(input_ids):
        result["sequences"] = run(input_ids)
        return result["sequences"]

    with model.trace(input_ids, fn=fn) as tracer:
        cache = tracer.cache(modules=unique)
    records = rec.records()
    n_steps = records["cur_step"].shape[0]
    with_sc = records["has_self_cond"].any(-1).tolist() if n_steps else []
    per_name = {}
    for n, e in envoys.items():
        outs = cache[paths[id(points[n])]].output if envoys else []
        if isinstance(outs, torch.Tensor):  # nnsight returns one call's output bare, not as a list of one
            outs = [outs]
        if n.endswith("self_cond.hook_logits_in"):
            steps = [s for s in range(n_steps) if with_sc[s]]
        else:
            steps = list(range(n_steps))
        if len(outs) != len(steps):
            raise RuntimeError(f"nnsight recorded {len(outs)} calls of {n!r} for {len(steps)} steps; use backend='tl'")
        per_name[n] = dict(zip(steps, outs))
    for s in range(n_steps):
        for n in names:
            if s in per_name[n]:
                rec.store(n, per_name[n][s], s)
        rec.flush(s)
    return result["sequences"]
