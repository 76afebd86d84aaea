"""Released architectures as meta-device models, and the paper-style DiffusionGemma vs Gemma 4 comparison.

Presets build the real transformers classes on the meta device (no weights, little memory) in the
released dtype (bfloat16), so `compare()` measures the full-size 26B-A4B models on a laptop CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM

from dgt_interp.depth.tracer import DepthError
from dgt_interp.models.build import ar_config, diffusion_config
from dgt_interp.models.released import released_config

from .compose import ar_generation_depth, ar_pass_depth, diffusion_generation_depth, diffusion_step_maps

PAPER_NAIVE_RATIO = 28.6  # Engels et al., arXiv 2606.20560, abstract
PAPER_BOTTLENECKED_RATIO = 1.1


# The released 26B-A4B pair (the backbone and its provenance: dgt_interp.models.released).
def _diffusiongemma_26b_a4b():
    return released_config("diffusion")


def _gemma4_26b_a4b():
    return released_config("ar")


def _diffusiongemma_tiny():
    return diffusion_config()


def _gemma4_tiny():
    return ar_config()


@dataclass(frozen=True)
class Preset:
    """A named architecture: `config()` builds its transformers config; `kind` is "diffusion" or "ar"."""

    name: str
    kind: str
    config: Callable[[], Any]
    dtype: torch.dtype
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("diffusiongemma-26b-a4b", "diffusion", _diffusiongemma_26b_a4b, torch.bfloat16,
               "DiffusionGemma 26B-A4B (30 layers, 128 experts top-8 + shared MLP, canvas 256)"),
        Preset("gemma4-26b-a4b", "ar", _gemma4_26b_a4b, torch.bfloat16,
               "Gemma 4 26B-A4B (same backbone, causal LM)"),
        Preset("diffusiongemma-tiny", "diffusion", _diffusiongemma_tiny, torch.float32,
               "the zoo's tiny DiffusionGemma size (dgt_interp.models.TinySize())"),
        Preset("gemma4-tiny", "ar", _gemma4_tiny, torch.float32, "the zoo's tiny Gemma 4 twin"),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise DepthError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_preset(name: str, device: str | torch.device = "meta") -> torch.nn.Module:
    """The preset's model (eval mode) on `device`; on meta it has shapes but no weights."""
    preset = get_preset(name)
    cls = DiffusionGemmaForBlockDiffusion if preset.kind == "diffusion" else Gemma4ForCausalLM
    with torch.device(device):
        model = cls(preset.config())
    return model.to(preset.dtype).eval()


@dataclass
class DepthComparison:
    """Per-pass and composed depths of a diffusion preset vs an AR preset, with the settings behind them."""

    diffusion: str
    autoregressive: str
    rules: str
    prompt_len: int
    canvas: int
    steps: int
    ar_pass: int  # one Gemma 4 forward over prompt + canvas tokens
    ar_generation: int  # `canvas` tokens generated one at a time, KV cache carried
    dg_first_step: int  # step 0: encoder + decoder, no self-conditioning input
    dg_step: int  # one bottlenecked step (interpretable self-conditioning input)
    dg_increment: int  # depth an opaque self-conditioning channel adds per step
    dg_naive: int  # `steps` steps, self-conditioning opaque
    dg_bottlenecked: int  # `steps` steps, self-conditioning bottlenecked
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def per_pass_ratio(self) -> float:
        return self.dg_step / self.ar_pass

    @property
    def naive_ratio(self) -> float:
        return self.dg_naive / self.ar_generation

    @property
    def bottlenecked_ratio(self) -> float:
        return self.dg_bottlenecked / self.ar_generation

    @property
    def steps_matching_paper(self) -> float:
        """Denoising steps at which our naive ratio would equal the paper's 28.6x."""
        return 1 + (PAPER_NAIVE_RATIO * self.ar_generation - self.dg_first_step) / self.dg_increment

    def lines(self) -> list[str]:
        return [
            f"rules: {self.rules}",
            f"settings: prompt {self.prompt_len} tokens, canvas {self.canvas} tokens, {self.steps} denoising steps; "
            f"Gemma 4 generates {self.canvas} tokens after the same prompt",
            "interpretable (depth 0): prompt tokens, every canvas token, every Gemma 4 sampled token; "
            "naive: self-conditioning logits opaque; bottlenecked: self-conditioning input interpretable",
            f"per pass: Gemma 4 forward over {self.prompt_len + self.canvas} tokens = {self.ar_pass}; "
            f"DiffusionGemma step 0 (encoder + decoder) = {self.dg_first_step}; "
            f"one bottlenecked step = {self.dg_step}; opaque channel adds {self.dg_increment} per step",
            f"composed: Gemma 4 generation = {self.ar_generation}; DiffusionGemma naive = {self.dg_naive}; "
            f"bottlenecked = {self.dg_bottlenecked}",
            f"per-pass ratio (bottlenecked step / Gemma 4 pass): {self.per_pass_ratio:.3f}x",
            f"naive ratio: {self.naive_ratio:.1f}x (paper {PAPER_NAIVE_RATIO}x; "
            f"{self.steps_matching_paper:.1f} steps would give {PAPER_NAIVE_RATIO}x)",
            f"bottlenecked ratio: {self.bottlenecked_ratio:.2f}x (paper {PAPER_BOTTLENECKED_RATIO}x)",
        ]


def settings_notes(dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """The modelling choices behind every number `compare` prints."""
    return [f"models: transformers classes on the meta device in {str(dtype).replace('torch.', '')} "
            "(dtype casts cost 1)"] + SETTINGS_NOTES


SETTINGS_NOTES = [
    "MoE: experts run as transformers' 'batched_mm' (gathered top-k weights, one bmm; same depth as routing)",
    "attention: sdpa, costed as its math decomposition (QK^T, mask, safe softmax, PV)",
    "the sampling/argmax that produces each interpretable token is not counted on either side",
    "fed-back logits include the temperature division and the cast to the embedding dtype (+2 per step)",
]


def compare(
    diffusion: str = "diffusiongemma-26b-a4b",
    autoregressive: str = "gemma4-26b-a4b",
    *,
    steps: int = 48,
    canvas: int | None = None,
    prompt_len: int = 256,
    rules: str = "reference",
) -> DepthComparison:
    """Trace both presets on meta and compose the generations (about 10 s for the 26B-A4B pair)."""
    dg_preset, ar_preset = get_preset(diffusion), get_preset(autoregressive)
    if dg_preset.kind != "diffusion" or ar_preset.kind != "ar":
        raise DepthError(f"compare a diffusion preset with an AR one; got {diffusion!r} ({dg_preset.kind}) "
                         f"and {autoregressive!r} ({ar_preset.kind})")
    t0 = time.perf_counter()
    dg = build_preset(diffusion)
    canvas = canvas or dg.config.canvas_length
    maps = diffusion_step_maps(dg, prompt_len, canvas, rules=rules)
    naive = diffusion_generation_depth(dg, prompt_len, canvas, steps, self_conditioning="opaque", maps=maps)
    bottleneck = diffusion_generation_depth(dg, prompt_len, canvas, steps, self_conditioning="bottleneck", maps=maps)
    del dg
    ar = build_preset(autoregressive)
    ar_pass = ar_pass_depth(ar, prompt_len + canvas, rules=rules)
    ar_gen = ar_generation_depth(ar, prompt_len, canvas, rules=rules)
    return DepthComparison(
        diffusion=diffusion, autoregressive=autoregressive, rules=rules, prompt_len=prompt_len, canvas=canvas,
        steps=steps, ar_pass=ar_pass, ar_generation=ar_gen.depth, dg_first_step=naive.first_step,
        dg_step=naive.bottlenecked_step, dg_increment=naive.increment, dg_naive=naive.depth,
        dg_bottlenecked=bottleneck.depth, seconds=time.perf_counter() - t0, notes=settings_notes(dg_preset.dtype),
    )


def preset_summary(name: str, *, steps: int = 48, canvas: int | None = None, prompt_len: int = 256,
                   rules: str = "reference") -> list[str]:
    """Printable per-pass and composed depths of one preset (what `dgt-interp depth --preset X` shows)."""
    preset = get_preset(name)
    t0 = time.perf_counter()
    model = build_preset(name)
    canvas = canvas or getattr(model.config, "canvas_length", None) or 256
    lines = [f"{name}: {preset.description}", f"  rules: {rules}; prompt {prompt_len} tokens, {canvas} new tokens"]
    if preset.kind == "diffusion":
        maps = diffusion_step_maps(model, prompt_len, canvas, rules=rules)
        naive = maps.compose(steps, "opaque")
        bottleneck = maps.compose(steps, "bottleneck")
        lines += [
            f"  step 0 (encoder + decoder, no self-conditioning): {naive[0]}",
            f"  one bottlenecked step: {maps.bottlenecked_step}; opaque channel adds {maps.increment} per step",
            f"  {steps} steps: naive {max(naive)}, bottlenecked {max(bottleneck)}",
        ]
    else:
        lines += [
            f"  one forward over {prompt_len + canvas} tokens: {ar_pass_depth(model, prompt_len + canvas, rules=rules)}",
            f"  generating {canvas} tokens with the KV cache: {ar_generation_depth(model, prompt_len, canvas, rules=rules).depth}",
        ]
    lines.append(f"  ({time.perf_counter() - t0:.1f} s on the meta device)")
    return lines
