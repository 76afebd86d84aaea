"""The released 26B-A4B models' shapes, and realistic test models built from them with fewer layers.

`google/diffusiongemma-26B-A4B-it` and its autoregressive twin `google/gemma-4-26B-A4B-it` share one
backbone (`BACKBONE_26B_A4B`): vocabulary 262,144, hidden 2816, 30 layers (5 sliding : 1 full),
128 experts top-8 beside a dense MLP, DiffusionGemma's canvas of 256 tokens. No hub is needed to
study code paths at those shapes: `build_released("diffusion", num_layers=2)` builds the released
text config with its depth cut (and optionally its experts), random-initialised in bfloat16, with
the project's BPE test tokenizer attached (a real subword tokenizer: one token spans many
characters) and the released sampler defaults (48 denoising steps, one canvas of new tokens).

    >>> model = build_released("diffusion", num_layers=2)     # ~2.4B parameters, ~4.8 GB in bf16
    >>> ar = build_released("ar", num_layers=2)               # the Gemma 4 twin at the same shapes

Random init is fast and deterministic: the model is allocated without HF's per-module init and
each tensor is filled from one seeded generator with HF's distribution class (matrices: zero-mean
with std `initializer_range`, here uniform, which is ~3x faster than normal on CPU; vectors: ones,
as HF gives every norm and scale). The numbers are not HF's own draws; the shapes and code paths are.
"""

from __future__ import annotations

import math

import torch
from transformers import (
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    DiffusionGemmaTextConfig,
    Gemma4ForCausalLM,
    Gemma4TextConfig,
    GenerationConfig,
)
from transformers.initialization import no_init_weights

from dgt_interp.backends.devices import check_device
from dgt_interp.models.bpe import bpe_tokenizer
from dgt_interp.models.build import ModelConfigError, diffusion_generation_config, tiny_vision_config
from dgt_interp.sampling import PRESETS
from dgt_interp.tokenizer import attach_tokenizer

# The 26B-A4B backbone shared by google/diffusiongemma-26B-A4B-it and google/gemma-4-26B-A4B-it.
# transformers' `DiffusionGemmaTextConfig()` / `Gemma4TextConfig()` defaults already match the released
# depth and vocabulary (num_hidden_layers=30, vocab_size=262_144, 5 sliding : 1 full layer types, rope
# parameters, final_logit_softcapping=30 for DiffusionGemma) but leave the MoE fields unset and describe a
# narrower model. The values below are the released checkpoint's text_config, quoted verbatim from its
# config.json in lablup/mlxcel src/models/diffusion_gemma/tests.rs (REAL_CONFIG_SNIPPET):
BACKBONE_26B_A4B = dict(
    hidden_size=2816,  # default 2304
    intermediate_size=2112,  # width of the always-on dense MLP (the "1 shared" expert); default 9216
    num_attention_heads=16,  # default 8
    num_key_value_heads=8,  # default 4 (sliding layers)
    num_global_key_value_heads=2,  # full layers; also in transformers' EP-plan comment for gemma-4-26B-A4B-it
    head_dim=256,  # = default
    global_head_dim=512,  # = default (full-attention layers)
    num_experts=128,  # default None (REFERENCES: 128 experts)
    top_k_experts=8,  # default None (REFERENCES: 8 active + 1 shared)
    moe_intermediate_size=704,  # default None
    sliding_window=1024,  # default 512
    max_position_embeddings=262_144,  # default 131_072
    final_logit_softcapping=30.0,
)
RELEASED_LAYERS = 30
RELEASED_VOCAB = 262_144
RELEASED_CANVAS = 256
# The BPE test tokenizer's special ids (dgt_interp.models.bpe), which the generation configs use.
PAD_ID, EOS_ID, BOS_ID, END_OF_TURN_ID = 0, 1, 2, 5
KINDS = ("diffusion", "ar")


def released_layer_types(num_layers: int = RELEASED_LAYERS) -> list[str]:
    """The released pattern (every 6th layer full attention, the rest sliding) cut to `num_layers`,
    keeping a full-attention last layer as the released model has, so both kinds stay present."""
    return ["full_attention" if (i + 1) % 6 == 0 or i == num_layers - 1 else "sliding_attention"
            for i in range(num_layers)]


def _backbone(num_layers: int, num_experts: int | None) -> dict:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= RELEASED_LAYERS:
        raise ModelConfigError(f"num_layers={num_layers!r}: pick 1..{RELEASED_LAYERS} (the released model has "
                               f"{RELEASED_LAYERS})")
    kw = dict(BACKBONE_26B_A4B, num_hidden_layers=num_layers, layer_types=released_layer_types(num_layers),
              pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID)
    if num_experts is not None:
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or not 1 <= num_experts <= 128:
            raise ModelConfigError(f"num_experts={num_experts!r}: pick 1..128 (the released model has 128, top-8)")
        kw.update(num_experts=num_experts, top_k_experts=min(BACKBONE_26B_A4B["top_k_experts"], num_experts))
    return kw


def released_config(kind: str = "diffusion", *, num_layers: int = RELEASED_LAYERS, num_experts: int | None = None):
    """The released 26B-A4B config (`kind` "diffusion" or "ar") with `num_layers` layers and optionally
    `num_experts` experts (top-k capped at it); the vision tower is a tiny stand-in (text never uses it)."""
    if kind not in KINDS:
        raise ModelConfigError(f"kind={kind!r}: use 'diffusion' (DiffusionGemma) or 'ar' (the Gemma 4 twin)")
    text = _backbone(num_layers, num_experts)
    if kind == "diffusion":
        return DiffusionGemmaConfig(text_config=DiffusionGemmaTextConfig(**text), vision_config=tiny_vision_config(),
                                    canvas_length=RELEASED_CANVAS)
    # attention_k_eq_v: full layers reuse K as V (the checkpoint has no v_proj there); no per-layer input
    # embeddings in the 26B-A4B model (hidden_size_per_layer_input=0); the MoE block is on.
    return Gemma4TextConfig(**text, enable_moe_block=True, attention_k_eq_v=True, hidden_size_per_layer_input=0)


def released_generation_config(kind: str = "diffusion"):
    """The released sampler defaults: DiffusionGemma's entropy-bound sampler (48 steps, bound 0.1,
    temperature 0.8 -> 0.4) for one canvas of 256 tokens; greedy for the twin. EOS or end-of-turn stops."""
    eos = [EOS_ID, END_OF_TURN_ID]
    if kind == "diffusion":
        default = PRESETS["default"]
        config = diffusion_generation_config(max_new_tokens=RELEASED_CANVAS, **default)
        config.eos_token_id, config.pad_token_id, config.bos_token_id = eos, PAD_ID, BOS_ID
        return config
    return GenerationConfig(do_sample=False, max_new_tokens=RELEASED_CANVAS, pad_token_id=PAD_ID, eos_token_id=eos,
                            bos_token_id=BOS_ID)


@torch.no_grad()
def fast_random_init(model: torch.nn.Module, *, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Fill every parameter from one seeded generator: matrices uniform with standard deviation `std`
    (HF's `initializer_range`), vectors with ones (HF's norms and scales). Deterministic; no float32 copy."""
    gens: dict[torch.device, torch.Generator] = {}
    bound = std * math.sqrt(3.0)  # uniform(-a, a) has std a / sqrt(3)
    for param in model.parameters():
        if param.device.type == "meta":  # shapes only: nothing to draw
            continue
        if param.dim() >= 2:
            gen = gens.setdefault(param.device, torch.Generator(device=param.device).manual_seed(seed))
            param.uniform_(-bound, bound, generator=gen)
        else:
            param.fill_(1.0)
    return model


def random_model(cls, config, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu"):
    """`cls(config)` in `dtype` on `device`, weights tied as HF ties them, drawn by `fast_random_init`.

    HF's own construction initialises every tensor (slowly, in float32 on CPU); this allocates
    without it, ties what the class ties (the LM head to the embedding, DiffusionGemma's decoder
    layers to its encoder's), then draws each tensor once.
    """
    device = check_device(device, ModelConfigError)
    with no_init_weights(), torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    model.tie_weights()  # construction under no_init_weights leaves tied tensors as separate copies
    return fast_random_init(model, seed=seed, std=config.get_text_config().initializer_range)


def build_released(kind: str = "diffusion", *, num_layers: int = 2, num_experts: int | None = None, seed: int = 0,
                   dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu", tokenizer=None):
    """A random-init model at the released 26B-A4B shapes with `num_layers` layers (eval mode, `dtype`).

    `kind`: "diffusion" (`DiffusionGemmaForBlockDiffusion`) or "ar" (`Gemma4ForCausalLM`). The tokenizer
    (default: the BPE test tokenizer, `dgt_interp.models.bpe.bpe_tokenizer()`) is attached, so
    `load_tokenizer(model)` and every text-taking function use it. Two layers with all 128 experts
    are ~2.4B parameters (~4.8 GB in bf16); `num_experts=8` cuts that to ~0.9B. The weights are
    allocated and drawn on `device` (e.g. "cuda": no copy through host memory).
    """
    config = released_config(kind, num_layers=num_layers, num_experts=num_experts)
    cls = DiffusionGemmaForBlockDiffusion if kind == "diffusion" else Gemma4ForCausalLM
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelConfigError(f"dtype={dtype!r}: pass a floating dtype such as torch.bfloat16")
    model = random_model(cls, config, seed=seed, dtype=dtype, device=device)
    model.generation_config = released_generation_config(kind)
    attach_tokenizer(model, tokenizer if tokenizer is not None else bpe_tokenizer())
    return model.eval()


__all__ = ["BACKBONE_26B_A4B", "RELEASED_LAYERS", "RELEASED_VOCAB", "RELEASED_CANVAS", "released_layer_types",
           "released_config", "released_generation_config", "fast_random_init", "random_model", "build_released"]
