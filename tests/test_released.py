"""Models at the released 26B-A4B shapes (`dgt_interp.models.released`).

Fast tests check the config against transformers' own defaults for the released model and the
fast random init against HF's init. Tests marked `realistic` build the 2-layer model at the real
vocabulary and canvas (~2.4B parameters, ~5 GB, minutes per 48-step run on 2 CPU cores); they
run only with `--realistic` (see README: `make test PYTEST_ARGS="--realistic -m realistic"`).
"""

from __future__ import annotations

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, DiffusionGemmaTextConfig, Gemma4ForCausalLM, Gemma4TextConfig
from transformers.initialization import no_init_weights

from dgt_interp import capture, load_tokenizer, prompt_batch
from dgt_interp.errors import DgtInterpError
from dgt_interp.models import TinySize, build_diffusion, diffusion_config
from dgt_interp.models.bpe import bpe_tokenizer
from dgt_interp.models.released import (
    BACKBONE_26B_A4B,
    KINDS,
    random_model,
    build_released,
    fast_random_init,
    released_config,
    released_generation_config,
    released_layer_types,
)


def test_released_config_is_the_backbone_with_its_depth_cut():
    full = released_config("diffusion").text_config
    # the released depth, vocabulary and 5 sliding : 1 full pattern are transformers' own defaults
    assert full.layer_types == DiffusionGemmaTextConfig().layer_types == released_layer_types(30)
    assert (full.num_hidden_layers, full.vocab_size) == (30, 262_144)
    cut = released_config("diffusion", num_layers=2)
    text = cut.text_config
    assert text.num_hidden_layers == 2 and text.layer_types == ["sliding_attention", "full_attention"]
    per_layer = {"num_global_key_value_heads", "global_head_dim", "num_key_value_heads", "head_dim"}
    assert {k: text.to_dict()[k] for k in BACKBONE_26B_A4B if k not in per_layer} == {
        k: v for k, v in BACKBONE_26B_A4B.items() if k not in per_layer}
    sliding, full = text.per_layer_config  # transformers resolves the global-layer fields per layer
    assert (sliding.head_dim, sliding.num_key_value_heads) == (256, 8)
    assert (full.head_dim, full.num_key_value_heads) == (512, 2)
    assert cut.canvas_length == 256
    ar = released_config("ar", num_layers=7)
    assert isinstance(ar, Gemma4TextConfig) and ar.layer_types == Gemma4TextConfig().layer_types[:5] + [
        "full_attention", "full_attention"]
    few = released_config("diffusion", num_layers=1, num_experts=4).text_config
    assert (few.num_experts, few.top_k_experts) == (4, 4)


def test_released_generation_config_is_the_default_sampler_over_one_canvas():
    cfg = released_generation_config("diffusion")
    assert (cfg.max_denoising_steps, cfg.max_new_tokens, cfg.t_min, cfg.t_max) == (48, 256, 0.4, 0.8)
    assert cfg.sampler_config.entropy_bound == 0.1
    tok = bpe_tokenizer()
    assert cfg.eos_token_id == [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    assert (cfg.pad_token_id, cfg.bos_token_id) == (tok.pad_token_id, tok.bos_token_id)
    assert released_generation_config("ar").do_sample is False


@pytest.mark.parametrize("kind", KINDS)
def test_random_model_has_hf_structure_and_ties(kind):
    """Same parameters and the same tied tensors as the class's own construction (the LM head is the
    embedding; DiffusionGemma's decoder layers are its encoder's), on the released config (meta)."""
    config = released_config(kind, num_layers=2, num_experts=4)
    cls = DiffusionGemmaForBlockDiffusion if kind == "diffusion" else Gemma4ForCausalLM
    with torch.device("meta"):
        hf = cls(config)
    ours = random_model(cls, config, device="meta")
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in hf.named_parameters()]
    assert ours.get_output_embeddings().weight is ours.get_input_embeddings().weight


def test_fast_random_init_draws_what_hf_init_draws_per_tensor():
    """Same distribution class per tensor as HF's own init (vectors: ones; matrices: mean 0, std
    initializer_range), checked on a tiny config where HF's init is cheap."""
    hf = build_diffusion(TinySize(), seed=0)
    ours = random_model(type(hf), diffusion_config(TinySize()), dtype=torch.float32)
    mine = dict(ours.named_parameters())
    for name, p in hf.named_parameters():
        p, q = p.detach(), mine[name].detach()
        if p.dim() < 2:
            assert torch.equal(q, p), name  # HF: every norm and scale starts at one
        elif p.numel() >= 4096:  # enough draws for the std to be within 10% (sampling error ~1-2%)
            assert abs(float(q.std()) - float(p.std())) < 0.1 * float(p.std()), name
            assert abs(float(q.mean())) < 0.1 * float(p.std()), name


def test_fast_random_init_is_deterministic():
    with no_init_weights():
        a, b = (type(build_diffusion(TinySize()))._from_config(diffusion_config(TinySize())) for _ in range(2))
    fast_random_init(a, seed=3)
    fast_random_init(b, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("kwargs, needle", [
    (dict(kind="nope"), "kind='nope'"),
    (dict(num_layers=0), "num_layers=0"),
    (dict(num_layers=31), "num_layers=31"),
    (dict(num_experts=0), "num_experts=0"),
    (dict(dtype=torch.int8), "dtype=torch.int8"),
    (dict(device="cuda:7"), "cuda:7"),
])
def test_bad_released_settings_are_one_line_errors(kwargs, needle):
    with pytest.raises(DgtInterpError) as err:
        build_released(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ---- the realistic model: released shapes, 2 layers ------------------------------------------------

PROMPTS = ["def fibonacci(n):", "import os", "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def released_diffusion():
    """On a GPU where there is one (seconds per run), else on 2 CPU cores (minutes per 48-step run)."""
    torch.set_num_threads(2)
    try:
        yield build_released("diffusion", num_layers=2, device="cuda" if torch.cuda.is_available() else "cpu")
    finally:
        torch.set_num_threads(1)


@pytest.mark.realistic
def test_realistic_model_has_the_released_shapes(released_diffusion):
    text = released_diffusion.config.text_config
    assert (text.vocab_size, text.hidden_size, text.num_experts, text.top_k_experts) == (262_144, 2816, 128, 8)
    assert released_diffusion.dtype == torch.bfloat16 and released_diffusion.config.canvas_length == 256
    assert len(load_tokenizer(released_diffusion)) == len(bpe_tokenizer())


@pytest.mark.realistic
def test_realistic_capture_equals_generate_on_left_padded_text_prompts(released_diffusion):
    """3 prompts of different token lengths, left-padded, the default sampler run for all its 48 steps.

    The random-init model copies its input canvas confidently (the LM head is the embedding), so the
    adaptive stop would end the run after a few steps; `confidence_threshold=None` turns it off, as
    `generate` allows, so every one of the 48 steps runs and is recorded."""
    model = released_diffusion
    batch = {k: v.to(model.device) for k, v in prompt_batch(PROMPTS, load_tokenizer(model)).items()}
    assert len(set(batch["attention_mask"].sum(-1).tolist())) == 3
    all_steps = dict(confidence_threshold=None)
    torch.manual_seed(0)
    ref = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **all_steps)
    traj = capture(model, batch["input_ids"], attention_mask=batch["attention_mask"], seed=0,
                   names="blocks.1.hook_resid_post", positions=[0, 255], **all_steps)
    ref = ref.sequences if hasattr(ref, "sequences") else ref  # the released config returns a generate output
    assert torch.equal(traj.sequences, ref.cpu())
    assert traj.n_steps == 48
    assert traj.stack("blocks.*.hook_resid_post").shape == (48, 1, 3, 2, 2816)
