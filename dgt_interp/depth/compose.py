"""Compose serial depth across passes: autoregressive generation and diffusion denoising.

Depth is max-plus linear in the depths of a pass's inputs: trace one pass with its carried state marked
as symbolic sources and you get a `DepthMap` (`out = max_s(depth_s + weight_s)`). Chaining maps gives
the depth of a whole generation without tracing every pass:

- **Gemma 4 (AR)**: the KV cache carries opaque state from pass to pass. Layer l of the new position
  reads the cached K/V of layer l (state sources `k{l}`, `v{l}`); each pass appends its own K/V, so the
  cache's depth after a pass is max(before, new). Sampled tokens are interpretable (depth 0). The map of
  a decode pass depends on the cache length only through ceil(log2(keys)), so one trace per distinct
  value (a "bucket") covers every pass.
- **DiffusionGemma**: the encoder writes the prompt's K/V once; each denoising step runs the decoder on
  the canvas (tokens: interpretable) with the previous step's processed logits as self-conditioning
  input. Opaque channel: step s+1's input has the depth of step s's processed logits (temperature
  division and a dtype cast included), so depth grows by about one pass per step. Bottlenecked channel
  (the logits replaced by readable tokens / a top-k distribution): the input resets to 0 each step.

Every function has a `_bruteforce` twin that traces the whole loop in one `DepthTracer`; the tests
check they agree on tiny models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from transformers import DynamicCache

from .rules import lg
from .tracer import CONST, DepthError, DepthTracer, dense_experts, interpretable, serial_depth

SELF_CONDITIONING = ("opaque", "bottleneck")


@dataclass(frozen=True)
class DepthMap:
    """Max-plus linear map from source depths to output depths.

    weights[output][source] is the longest path from `source` to `output` (CONST: from constants and
    depth-0 inputs); a missing source has no path. `apply({"sc": 100})` evaluates it (unlisted sources
    count as 0).
    """

    weights: dict[str, dict[str, int]]

    def apply(self, depths: Mapping[str, int] | None = None) -> dict[str, int]:
        depths = dict(depths or {})
        depths.setdefault(CONST, 0)
        return {o: max(depths.get(s, 0) + w for s, w in ws.items()) for o, ws in self.weights.items()}


def trace_map(
    fn: Callable[[], Any],
    sources: Mapping[str, Any],
    outputs: Callable[[Any], Mapping[str, Any]],
    *,
    rules: str = "reference",
    on_unknown: str = "error",
    models: list[torch.nn.Module] | None = None,
) -> tuple[DepthMap, Any]:
    """Trace `fn()` once with `sources` (name -> tensors) symbolic; return the map to `outputs(result)`."""
    tracer = DepthTracer(rules=rules, on_unknown=on_unknown, models=models)
    for name, obj in sources.items():
        tracer.set_depth(obj, name)
    with torch.no_grad(), tracer:
        result = fn()
    named = outputs(result)
    return DepthMap({name: tracer.paths(obj) for name, obj in named.items()}), result


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _text_config(model: torch.nn.Module):
    return model.config.get_text_config()


def _cache_tensors(cache) -> dict[str, torch.Tensor]:
    """Per-layer cached K/V of a transformers Cache, named `k{l}` / `v{l}` (the carried state)."""
    out: dict[str, torch.Tensor] = {}
    for l, layer in enumerate(cache.layers):
        if isinstance(getattr(layer, "keys", None), torch.Tensor):
            out[f"k{l}"] = layer.keys
            out[f"v{l}"] = layer.values
    return out


def _new_cache(model: torch.nn.Module):
    return DynamicCache(config=_text_config(model))


def _tokens(model: torch.nn.Module, n: int) -> torch.Tensor:
    """n token ids (all 0): their values do not matter, tokens are interpretable (depth 0)."""
    return torch.zeros(1, n, dtype=torch.long, device=_device(model))


# ---------------------------------------------------------------------------------------------------
# Autoregressive generation (Gemma 4)
# ---------------------------------------------------------------------------------------------------


@dataclass
class ARGenerationDepth:
    """Depth of generating `new_tokens` tokens after a `prompt_len`-token prompt with a KV cache.

    step_depths[i]: depth of the logits of pass i (pass 0 reads the prompt, pass i > 0 one new token).
    depth: the deepest of them (tokens are interpretable, so a new opaque stretch starts at each token,
    but the cache carries opaque K/V forward).
    """

    prompt_len: int
    new_tokens: int
    rules: str
    step_depths: list[int]
    traced_passes: int = 0

    @property
    def depth(self) -> int:
        return max(self.step_depths)


def _ar_signature(model: torch.nn.Module, cached: int) -> tuple[int, int]:
    """What a decode pass's depth map depends on: ceil(log2) of the key lengths (full, sliding layers)."""
    window = getattr(_text_config(model), "sliding_window", None) or (cached + 1)
    return lg(cached + 1), lg(min(cached, window - 1) + 1)


def _ar_pass(model, ids, cache):
    return model(input_ids=ids, cache=cache, use_cache=True)


def ar_generation_depth(
    model: torch.nn.Module, prompt_len: int, new_tokens: int, *, rules: str = "reference", on_unknown: str = "error"
) -> ARGenerationDepth:
    """Composed depth of AR generation: one traced prefill, one traced decode pass per key-length bucket."""
    if prompt_len < 1 or new_tokens < 1:
        raise DepthError("prompt_len and new_tokens must be >= 1")
    cache = _new_cache(model)
    ids = _tokens(model, prompt_len)

    def prefill_outputs(out):
        return {"logits": out.logits, **_cache_tensors(out.cache)}

    prefill, _ = trace_map(lambda: _ar_pass(model, ids, cache), {}, prefill_outputs,
                           rules=rules, on_unknown=on_unknown, models=[model])
    state = prefill.apply()
    step_depths = [state.pop("logits")]
    maps: dict[tuple[int, int], DepthMap] = {}
    for i in range(1, new_tokens):
        cached = prompt_len + i - 1
        sig = _ar_signature(model, cached)
        if sig not in maps:
            cache = _new_cache(model)
            with torch.no_grad(), dense_experts(model):  # a cache of the right length (untraced; values unused)
                _ar_pass(model, _tokens(model, cached), cache)
            sources = _cache_tensors(cache)
            maps[sig], _ = trace_map(lambda: _ar_pass(model, _tokens(model, 1), cache), sources, prefill_outputs,
                                     rules=rules, on_unknown=on_unknown, models=[model])
        out = maps[sig].apply(state)
        step_depths.append(out.pop("logits"))
        state = out
    return ARGenerationDepth(prompt_len, new_tokens, rules, step_depths, traced_passes=1 + len(maps))


def ar_generation_depth_bruteforce(
    model: torch.nn.Module, prompt_len: int, new_tokens: int, *, rules: str = "reference", on_unknown: str = "error"
) -> ARGenerationDepth:
    """The same quantity by tracing every pass of a greedy loop (argmax tokens marked interpretable)."""
    cache = _new_cache(model)
    ids = _tokens(model, prompt_len)
    step_depths = []
    tracer = DepthTracer(rules=rules, on_unknown=on_unknown, models=[model])
    with torch.no_grad(), tracer:
        for _ in range(new_tokens):
            out = _ar_pass(model, ids, cache)
            step_depths.append(tracer.depth(out.logits))
            ids = interpretable(out.logits[:, -1:].argmax(-1))
    return ARGenerationDepth(prompt_len, new_tokens, rules, step_depths, traced_passes=new_tokens)


def ar_pass_depth(model: torch.nn.Module, seq_len: int, *, rules: str = "reference", on_unknown: str = "error") -> int:
    """Depth of one parallel forward over `seq_len` tokens (what the reference tool measures for Gemma)."""
    return serial_depth(model, input_ids=_tokens(model, seq_len), rules=rules, on_unknown=on_unknown,
                        return_report=True).outputs["logits"]


# ---------------------------------------------------------------------------------------------------
# Diffusion denoising (DiffusionGemma)
# ---------------------------------------------------------------------------------------------------


@dataclass
class DiffusionGenerationDepth:
    """Depth of denoising one canvas in `steps` decoder passes.

    step_depths[s]: depth of step s's logits. first_step: step 0 (no self-conditioning input).
    bottlenecked_step: a later step whose self-conditioning input is interpretable (depth 0): one
    "bottlenecked DiffusionGemma step". increment: longest path from a step's self-conditioning input
    to the next step's (how much an opaque channel adds per step).
    """

    prompt_len: int
    canvas: int
    steps: int
    self_conditioning: str
    rules: str
    step_depths: list[int]
    first_step: int = 0
    bottlenecked_step: int = 0
    increment: int = 0
    traced_passes: int = 0

    @property
    def depth(self) -> int:
        return max(self.step_depths)


def _process_logits(logits: torch.Tensor, dtype: torch.dtype, temperature: float = 0.8) -> torch.Tensor:
    """What `generate` feeds back: temperature-scaled logits cast to the embedding dtype."""
    return (logits / temperature).to(dtype)


def _diffusion_first_step(model, prompt, canvas_ids, cache):
    return model(input_ids=prompt, cache=cache, decoder_input_ids=canvas_ids)


def _diffusion_step(model, canvas_ids, cache, sc):
    return model(cache=cache, decoder_input_ids=canvas_ids, self_conditioning_logits=sc)


def _embedding_dtype(model) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype


@dataclass(frozen=True)
class DiffusionStepMaps:
    """The two traced passes a canvas is composed from.

    first: step 0 (encoder over the prompt + decoder, no self-conditioning) -> logits, sc (fed-back
    logits), k{l}/v{l} (the encoder cache). step: a later decoder step from sources sc, k{l}, v{l}.
    """

    first: DepthMap
    step: DepthMap

    def compose(self, steps: int, self_conditioning: str = "opaque") -> list[int]:
        """Logits depth of each of `steps` steps, with the channel opaque or bottlenecked."""
        if self_conditioning not in SELF_CONDITIONING:
            raise DepthError(f"unknown self_conditioning {self_conditioning!r}; "
                             f"choose one of: {', '.join(SELF_CONDITIONING)}")
        state = self.first.apply()
        kv = {k: v for k, v in state.items() if k not in ("logits", "sc")}
        depths, sc = [state["logits"]], state["sc"]
        for _ in range(1, steps):
            out = self.step.apply({**kv, "sc": sc if self_conditioning == "opaque" else 0})
            depths.append(out["logits"])
            sc = out["sc"]
        return depths

    @property
    def bottlenecked_step(self) -> int:
        kv = {k: v for k, v in self.first.apply().items() if k not in ("logits", "sc")}
        return self.step.apply({**kv, "sc": 0})["logits"]

    @property
    def increment(self) -> int:
        return self.step.weights["sc"].get("sc", 0)


def diffusion_step_maps(
    model: torch.nn.Module, prompt_len: int, canvas: int, *, rules: str = "reference", on_unknown: str = "error"
) -> DiffusionStepMaps:
    """Trace step 0 and one later step of a canvas (the later step with symbolic cache and channel)."""
    if prompt_len < 1 or canvas < 1:
        raise DepthError("prompt_len and canvas must be >= 1")
    dtype = _embedding_dtype(model)
    cache = _new_cache(model)
    prompt, canvas_ids = _tokens(model, prompt_len), _tokens(model, canvas)

    def run_first():
        out = _diffusion_first_step(model, prompt, canvas_ids, cache)
        return out, _process_logits(out.logits, dtype)

    first, (result, sc_input) = trace_map(
        run_first, {}, lambda r: {"logits": r[0].logits, "sc": r[1], **_cache_tensors(r[0].cache)},
        rules=rules, on_unknown=on_unknown, models=[model])
    cache = result.cache

    def run_step():
        out = _diffusion_step(model, canvas_ids, cache, sc_input)
        return out, _process_logits(out.logits, dtype)

    sources = {"sc": sc_input, **_cache_tensors(cache)}
    step, _ = trace_map(run_step, sources, lambda r: {"logits": r[0].logits, "sc": r[1]},
                        rules=rules, on_unknown=on_unknown, models=[model])
    return DiffusionStepMaps(first, step)


def diffusion_generation_depth(
    model: torch.nn.Module,
    prompt_len: int,
    canvas: int,
    steps: int,
    *,
    self_conditioning: str = "opaque",
    rules: str = "reference",
    on_unknown: str = "error",
    maps: DiffusionStepMaps | None = None,
) -> DiffusionGenerationDepth:
    """Composed depth of one canvas from two traced passes (pass `maps` to reuse them)."""
    if steps < 1:
        raise DepthError("steps must be >= 1")
    maps = maps or diffusion_step_maps(model, prompt_len, canvas, rules=rules, on_unknown=on_unknown)
    step_depths = maps.compose(steps, self_conditioning)
    return DiffusionGenerationDepth(
        prompt_len, canvas, steps, self_conditioning, rules, step_depths,
        first_step=step_depths[0], bottlenecked_step=maps.bottlenecked_step, increment=maps.increment,
        traced_passes=2,
    )


def diffusion_generation_depth_bruteforce(
    model: torch.nn.Module,
    prompt_len: int,
    canvas: int,
    steps: int,
    *,
    self_conditioning: str = "opaque",
    rules: str = "reference",
    on_unknown: str = "error",
) -> DiffusionGenerationDepth:
    """The same quantity by tracing all `steps` passes (bottleneck: the fed-back logits are interpretable)."""
    dtype = _embedding_dtype(model)
    cache = _new_cache(model)
    prompt, canvas_ids = _tokens(model, prompt_len), _tokens(model, canvas)
    tracer = DepthTracer(rules=rules, on_unknown=on_unknown, models=[model])
    step_depths = []
    with torch.no_grad(), tracer:
        out = _diffusion_first_step(model, prompt, canvas_ids, cache)
        for s in range(steps):
            if s:
                out = _diffusion_step(model, canvas_ids, cache, sc)
            step_depths.append(tracer.depth(out.logits))
            sc = _process_logits(out.logits, dtype)
            if self_conditioning == "bottleneck":
                sc = interpretable(sc)
    return DiffusionGenerationDepth(prompt_len, canvas, steps, self_conditioning, rules, step_depths,
                                    first_step=step_depths[0], traced_passes=steps)
