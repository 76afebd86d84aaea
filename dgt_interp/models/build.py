"""Build tiny random-init DiffusionGemma and Gemma 4 models from a few size arguments.

Real `transformers` classes, real code paths, sizes small enough for a 2-core CPU. The vision tower
that `DiffusionGemmaConfig` insists on is kept tiny (it is never used on text) so the parameter
count stays that of the text model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    DiffusionGemmaTextConfig,
    Gemma4ForCausalLM,
    Gemma4TextConfig,
    Gemma4VisionConfig,
    GenerationConfig,
)
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    DiffusionGemmaGenerationConfig,
    EntropyBoundSamplerConfig,
)

from dgt_interp.errors import DgtInterpError
from dgt_interp.tasks.tokenizer import VOCAB, build_tokenizer
from dgt_interp.tokenizer import attach_tokenizer


class ModelConfigError(DgtInterpError, ValueError):
    """A tiny-model size that cannot be built (one-line message)."""


@dataclass(frozen=True)
class TinySize:
    """Width/depth of a tiny model. Defaults are the size trained for the shipped zoo."""

    vocab_size: int = 32
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    num_experts: int = 4
    top_k_experts: int = 2
    moe_intermediate_size: int = 64
    intermediate_size: int = 256
    max_position_embeddings: int = 128
    canvas_length: int = 8
    # "full": every layer full attention (proportional RoPE on 25% of head dims, theta 1e6);
    # "gemma": Gemma 4's layout, sliding-window layers (standard RoPE on all dims, theta 1e4; the
    # 512 window exceeds every sequence here, so attention stays global) with a full last layer.
    attention: str = "full"
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2
    # DiffusionGemma reserves three ids for images; they must lie inside the vocabulary.
    image_token_id: int | None = None
    boi_token_id: int | None = None
    eoi_token_id: int | None = None

    def image_ids(self) -> tuple[int, int, int]:
        v = self.vocab_size
        return (
            self.image_token_id if self.image_token_id is not None else v - 3,
            self.boi_token_id if self.boi_token_id is not None else v - 2,
            self.eoi_token_id if self.eoi_token_id is not None else v - 1,
        )


def _layer_types(size: TinySize) -> list[str]:
    if size.attention == "full":
        return ["full_attention"] * size.num_hidden_layers
    if size.attention == "gemma":
        return ["sliding_attention"] * (size.num_hidden_layers - 1) + ["full_attention"]
    raise ModelConfigError(f"unknown attention layout {size.attention!r}; use 'full' or 'gemma'")


def _text_kwargs(size: TinySize) -> dict:
    return dict(
        vocab_size=size.vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads,
        head_dim=size.head_dim,
        global_head_dim=size.head_dim,
        max_position_embeddings=size.max_position_embeddings,
        layer_types=_layer_types(size),
        num_experts=size.num_experts,
        top_k_experts=size.top_k_experts,
        moe_intermediate_size=size.moe_intermediate_size,
        pad_token_id=size.pad_token_id,
        eos_token_id=size.eos_token_id,
        bos_token_id=size.bos_token_id,
    )


def tiny_vision_config() -> Gemma4VisionConfig:
    """A vision tower of a few thousand parameters: DiffusionGemma requires one, text never uses it."""
    return Gemma4VisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        position_embedding_size=16,
    )


def diffusion_config(size: TinySize = TinySize()) -> DiffusionGemmaConfig:
    image_id, boi_id, eoi_id = size.image_ids()
    text = DiffusionGemmaTextConfig(**_text_kwargs(size))
    return DiffusionGemmaConfig(
        text_config=text,
        vision_config=tiny_vision_config(),
        canvas_length=size.canvas_length,
        image_token_id=image_id,
        boi_token_id=boi_id,
        eoi_token_id=eoi_id,
    )


def ar_config(size: TinySize = TinySize()) -> Gemma4TextConfig:
    """The autoregressive twin: same width, depth, heads and MoE as `diffusion_config(size)`."""
    return Gemma4TextConfig(
        **_text_kwargs(size),
        enable_moe_block=True,
        hidden_size_per_layer_input=0,
        final_logit_softcapping=30.0,
    )


def diffusion_generation_config(
    size: TinySize = TinySize(),
    *,
    max_new_tokens: int | None = None,
    max_denoising_steps: int = 48,
    entropy_bound: float = 0.1,
    t_min: float = 0.4,
    t_max: float = 0.8,
    stability_threshold: int = 1,
    confidence_threshold: float = 0.005,
) -> DiffusionGemmaGenerationConfig:
    """DiffusionGemma's sampler defaults, with EOS/pad set and one canvas of new tokens.

    A freshly built model has no EOS/pad in its generation config and would generate 256 tokens:
    always save one of these next to the weights.
    """
    return DiffusionGemmaGenerationConfig(
        max_new_tokens=max_new_tokens or size.canvas_length,
        max_denoising_steps=max_denoising_steps,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=float(entropy_bound)),
        t_min=float(t_min),
        t_max=float(t_max),
        stability_threshold=stability_threshold,
        confidence_threshold=float(confidence_threshold),
        pad_token_id=size.pad_token_id,
        eos_token_id=size.eos_token_id,
        bos_token_id=size.bos_token_id,
    )


def ar_generation_config(size: TinySize = TinySize(), *, max_new_tokens: int | None = None) -> GenerationConfig:
    """Greedy decoding with EOS/pad set."""
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens or size.canvas_length,
        pad_token_id=size.pad_token_id,
        eos_token_id=size.eos_token_id,
        bos_token_id=size.bos_token_id,
    )


def _attach_task_tokenizer(model, size: TinySize) -> None:
    """Tiny models of the tasks' vocabulary size speak the tasks' character tokenizer."""
    if size.vocab_size == len(VOCAB):
        attach_tokenizer(model, build_tokenizer())


def build_diffusion(size: TinySize = TinySize(), *, seed: int = 0) -> DiffusionGemmaForBlockDiffusion:
    """A random-init `DiffusionGemmaForBlockDiffusion` (eval mode, float32) with a usable generation config."""
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(diffusion_config(size))
    model.generation_config = diffusion_generation_config(size)
    _attach_task_tokenizer(model, size)
    return model.eval()


def build_ar(size: TinySize = TinySize(), *, seed: int = 0) -> Gemma4ForCausalLM:
    """A random-init `Gemma4ForCausalLM` twin (eval mode, float32) with a greedy generation config."""
    torch.manual_seed(seed)
    model = Gemma4ForCausalLM(ar_config(size))
    model.generation_config = ar_generation_config(size)
    _attach_task_tokenizer(model, size)
    return model.eval()


def size_of(model) -> TinySize:
    """Recover the `TinySize` of a model built here (or any model with a compatible config)."""
    cfg = model.config
    text = cfg.get_text_config()
    return TinySize(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        head_dim=text.head_dim,
        num_experts=text.num_experts,
        top_k_experts=text.top_k_experts,
        moe_intermediate_size=text.moe_intermediate_size,
        intermediate_size=text.intermediate_size,
        max_position_embeddings=text.max_position_embeddings,
        # A diffusion model's canvas; an AR twin keeps the same budget as `max_new_tokens`.
        canvas_length=getattr(cfg, "canvas_length", None) or getattr(model.generation_config, "max_new_tokens", None)
        or 8,
        attention="full" if all(t == "full_attention" for t in text.layer_types) else "gemma",
        pad_token_id=text.pad_token_id,
        eos_token_id=text.eos_token_id if isinstance(text.eos_token_id, int) else text.eos_token_id[0],
        bos_token_id=text.bos_token_id,
    )


def text_parameter_count(model) -> int:
    """Parameters that text generation uses (the vision tower and tied copies excluded)."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if "vision" in name or "embed_vision" in name or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


__all__ = [
    "TinySize",
    "diffusion_config",
    "ar_config",
    "diffusion_generation_config",
    "ar_generation_config",
    "build_diffusion",
    "build_ar",
    "size_of",
    "text_parameter_count",
]
