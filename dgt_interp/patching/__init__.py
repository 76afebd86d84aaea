"""Activation patching across layers *and denoising steps*, batched, with replayed sampler noise.

Context (as in TransformerLens' `patching`): run the model on a clean and a corrupted input, then
re-run the corrupted input while replacing (patching) one activation by its value on the clean run,
and measure how far the output moves towards the clean answer. On a diffusion LM a run is many
decoder passes, so a *site* is (step, hook name, position, head): the patch is applied at that
denoising step and the run then *continues denoising* with the real HF `generate`
(`dgt_interp.capture` with `fwd_hooks`), so its effect can travel through the sampler and the
self-conditioning channel to the final output.

The package, one concern per module:

- `sites`: `Site` (hook, step, positions, heads, intervention), `layer_sites` (a complete cut of a layer);
- `interventions`: the kind of intervention as an object: `Replace` (default), `Zero`, `Mean`,
  `AddVector`, `NextUlp`;
- `metrics`: the `Metric` protocol, `LogitDiff`, `AnswerProb`, `ExactMatch`, `normalise`;
- `experiment`: `Patching` (clean + corrupted runs with the same `sampling.ReplayedNoise`,
  patched runs batched along the batch axis, `rounding_noise`);
- `sweeps`: `get_act_patch_*` over `[step, layer, pos(, head)]`;
- `budget`: memory planning: `estimate_patching_bytes` (one patched copy, part by part),
  `plan_patching` (copies per `generate` within `max_bytes`), `default_max_bytes`.

Sites and positions. Positions index the hook tensor as it fires: canvas positions on DiffusionGemma;
on the AR twin step 0 is the prompt forward (prompt positions) and each later step sees one position.
Special sites: `self_cond.hook_logits_in` (the previous step's processed logits entering the decoder:
the self-conditioning channel; absent at a canvas's first step) and `hook_embed` (the canvas tokens:
tokens enter a step only through their embeddings, since the sampler overwrites every position, so
patching the embedding at step s is patching the input canvas at step s). The prompt path:
`blocks.{l}.hook_cache_k` / `hook_cache_v` (the encoder KV cache decoder layer l reads at a step;
positions = cached positions).

    >>> p = Patching(model, clean_ids, corrupted_ids, seed=0)
    >>> metric = LogitDiff(pos=0, correct=clean_tok, wrong=corrupted_tok)
    >>> grid = get_act_patch_resid_pre(p, metric)          # [step, layer, pos]
    >>> normalise(grid, p.clean_metric(metric), p.corrupted_metric(metric))
    >>> p.run([Site("blocks.1.hook_resid_pre", step=3, pos=2, intervention=Zero())])
"""

from dgt_interp.patching.budget import (MEMORY_FRACTION, Estimate, PatchPlan, default_max_bytes, estimate_patching_bytes,
                                        plan_patching)
from dgt_interp.patching.experiment import Patching, layer_names, patch_run
from dgt_interp.patching.interventions import AddVector, Intervention, Mean, NextUlp, Replace, Zero
from dgt_interp.patching.metrics import (AnswerProb, ExactMatch, LogitDiff, Metric, call_metric, metric_values,
                                         normalise)
from dgt_interp.patching.sites import Index, PatchingError, Site, indices, layer_sites
from dgt_interp.patching.sweeps import (get_act_patch, get_act_patch_attn_head_out_by_pos, get_act_patch_attn_out,
                                        get_act_patch_canvas, get_act_patch_mlp_out, get_act_patch_resid_post,
                                        get_act_patch_resid_pre, get_act_patch_self_cond)

__all__ = [
    "Site", "Index", "indices", "layer_sites", "PatchingError",
    "Intervention", "Replace", "Zero", "Mean", "AddVector", "NextUlp",
    "Metric", "LogitDiff", "AnswerProb", "ExactMatch", "normalise", "call_metric", "metric_values",
    "Patching", "patch_run", "layer_names",
    "MEMORY_FRACTION", "Estimate", "PatchPlan", "default_max_bytes", "estimate_patching_bytes", "plan_patching",
    "get_act_patch", "get_act_patch_resid_pre", "get_act_patch_resid_post", "get_act_patch_attn_out",
    "get_act_patch_mlp_out", "get_act_patch_attn_head_out_by_pos", "get_act_patch_self_cond", "get_act_patch_canvas",
]
