"""TransformerLens adapter and nnsight backend: registered, faithful, identical tensors."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from dgt_interp import capture, describe_names, list_names
from dgt_interp.capturing import CaptureError
from dgt_interp.backends.tl import DIFFUSION_ARCH, DiffusionGemmaArchitectureAdapter, bridge_for, structural_twin
from dgt_interp.evaluate import prompt_batch
from dgt_interp.names import level_for


def test_adapter_registered_with_transformer_lens(tiny_diffusion):
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    assert ArchitectureAdapterFactory._adapters[DIFFUSION_ARCH] is DiffusionGemmaArchitectureAdapter
    twin = structural_twin(tiny_diffusion)
    assert twin.lm_head.weight is tiny_diffusion.lm_head.weight  # shared, not copied
    bridge = build_bridge_from_module(twin, DIFFUSION_ARCH, hf_config=twin.config,
                                      post_adapter_hook=lambda a: setattr(a.cfg, "attn_implementation", None))
    ids, canvas = torch.tensor([[2, 5, 6]]), torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]])
    text = tiny_diffusion.config.get_text_config()
    with torch.no_grad():
        ref = tiny_diffusion(input_ids=ids, decoder_input_ids=canvas, cache=DynamicCache(config=text)).logits
        _, cache = bridge.run_with_cache(ids, decoder_input_ids=canvas, cache=DynamicCache(config=text))
        out = twin(input_ids=ids, decoder_input_ids=canvas, cache=DynamicCache(config=text)).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert "blocks.3.hook_resid_post" in cache and "self_cond.hook_signal" in cache


def test_name_registry(tiny_diffusion, tiny_ar):
    names = list_names(tiny_diffusion)
    for n in ("blocks.0.hook_resid_post", "blocks.3.hook_attn_out", "blocks.0.hook_mlp_out", "self_cond.hook_logits_in",
              "self_cond.hook_soft_embed", "self_cond.hook_signal", "self_cond.hook_out", "ln_final.hook_out"):
        assert n in names
    # attention patterns exist under eager attention only: listed (and marked) on DiffusionGemma, not on the AR twin
    assert "blocks.3.attn.hook_pattern" in names and "blocks.3.attn.hook_attn_scores" in names
    assert not [n for n in names if n.endswith("hook_result")]
    assert not [n for n in list_names(tiny_ar) if n.endswith(("hook_pattern", "hook_attn_scores"))]
    assert names.index("blocks.2.hook_resid_post") < names.index("blocks.10.hook_resid_post") if "blocks.10.hook_resid_post" in names else True
    table = describe_names(tiny_diffusion)
    assert "read-only" in table and "self_cond.hook_logits_in" in table and "eager attention only" in table
    assert "blocks.0.hook_resid_post" in list_names(tiny_ar) and not list_names(tiny_ar, "self_cond.*")
    assert list_names(tiny_diffusion, "self_cond.hook_*") == [
        "self_cond.hook_in", "self_cond.hook_logits_in", "self_cond.hook_out", "self_cond.hook_signal",
        "self_cond.hook_soft_embed"]


def test_cache_hooks_are_the_encoder_cache(tiny_diffusion):
    """blocks.{l}.hook_cache_k/v = the encoder's own KV cache of the prompt (HF's encoder, run directly), and editable."""
    ids = torch.tensor([[2, 5, 6, 7]])
    text = tiny_diffusion.config.get_text_config()
    cache = DynamicCache(config=text)
    with torch.no_grad():
        tiny_diffusion.model.encoder(input_ids=ids, cache=cache)
    names = ["blocks.*.hook_cache_k", "blocks.*.hook_cache_v"]
    traj = capture(tiny_diffusion, ids, names=names, max_denoising_steps=2, record="logits")
    for layer in range(text.num_hidden_layers):
        for s in range(traj.n_steps):  # [batch, cached_pos, kv_head, d_head], every decoder pass
            assert torch.equal(traj[f"blocks.{layer}.hook_cache_k"][s], cache.layers[layer].keys.transpose(1, 2))
            assert torch.equal(traj[f"blocks.{layer}.hook_cache_v"][s], cache.layers[layer].values.transpose(1, 2))
    zeroed = capture(tiny_diffusion, ids, max_denoising_steps=2, record="logits",
                     fwd_hooks=[("blocks.1.hook_cache_v", lambda t, hook: torch.zeros_like(t))])
    assert not torch.equal(zeroed["logits"][0], traj["logits"][0])
    assert level_for(tiny_diffusion, ["blocks.0.hook_cache_k"]) == "blocks"  # as cheap as the residual
    with pytest.raises(CaptureError, match="changes shape between recorded steps"):  # canvas 1 caches 8 more
        capture(tiny_diffusion, ids, names=names, max_denoising_steps=2, max_new_tokens=16)


def test_cheapest_bridge_level(tiny_diffusion):
    assert level_for(tiny_diffusion, ["blocks.0.hook_resid_post"]) == "blocks"
    assert level_for(tiny_diffusion, ["self_cond.hook_signal"]) == "resid"
    assert level_for(tiny_diffusion, ["blocks.0.attn.hook_out"]) == "full"
    assert bridge_for(tiny_diffusion, "blocks") is bridge_for(tiny_diffusion, "blocks")  # cached


def _same(a, b):
    for k in a.records:
        assert torch.equal(a.records[k], b.records[k]), k
    assert a.names == b.names
    for n in a.names:
        assert torch.equal(a[n], b[n]), n
        assert torch.equal(a.fired(n), b.fired(n)), n


def test_nnsight_equals_tl_diffusion(tiny_diffusion):
    b = prompt_batch(["12+34=", "5+6="])
    kw = dict(attention_mask=b["attention_mask"], seed=6, max_new_tokens=16, max_denoising_steps=5,
              names=["blocks.*.hook_resid_post", "self_cond.hook_logits_in", "blocks.1.attn.hook_out",
                     "blocks.2.experts.hook_out"], steps=[0, 1, 3, 6, 7], positions=[1, 2, 5])
    tl = capture(tiny_diffusion, b["input_ids"], backend="tl", **kw)
    nn = capture(tiny_diffusion, b["input_ids"], backend="nnsight", **kw)
    assert torch.equal(tl.sequences, nn.sequences)
    _same(tl, nn)
    assert tl["blocks.2.experts.hook_out"].shape == (5, 2, 3, 128)  # [tokens, d] reshaped to [batch, pos, d]


def test_nnsight_equals_tl_ar(tiny_ar):
    b = prompt_batch(["12+34=", "5+6="])
    kw = dict(attention_mask=b["attention_mask"], names=["blocks.*.hook_resid_post", "blocks.0.mlp.hook_out"])
    _same(capture(tiny_ar, b["input_ids"], backend="tl", **kw), capture(tiny_ar, b["input_ids"], backend="nnsight", **kw))


def test_tl_twin_stays_clear_of_nnsight(tiny_diffusion):
    """Regression: nnsight installs its controller as the forward of every module it wraps, for good;
    it used to wrap the twin TL captures run on, making every later TL capture pay for it."""
    b = prompt_batch(["12+34="])
    capture(tiny_diffusion, b["input_ids"], names="blocks.*.hook_resid_post", backend="nnsight", max_denoising_steps=2)
    capture(tiny_diffusion, b["input_ids"], names="blocks.*.hook_resid_post", max_denoising_steps=2)
    for level in ("blocks", "full"):
        twin = bridge_for(tiny_diffusion, level).twin
        assert not [n for n, m in twin.named_modules() if "forward" in m.__dict__], level


def test_one_model_scan_per_capture(tiny_diffusion, monkeypatch):
    """Regression: the twin's staleness check (every module's tensors and settings, the config) ran
    at every twin and name lookup, ~14 times per capture; it is computed once per capture now."""
    import dgt_interp.backends.tl as tl

    b = prompt_batch(["12+34="])
    kw = dict(names=["blocks.*.hook_resid_post", "self_cond.hook_signal"], max_denoising_steps=2)
    capture(tiny_diffusion, b["input_ids"], **kw)  # twins and name probes built
    calls = []
    scan = tl._scan
    monkeypatch.setattr(tl, "_scan", lambda model: calls.append(1) or scan(model))
    capture(tiny_diffusion, b["input_ids"], **kw)
    assert len(calls) == 1


def test_twin_rebuilt_when_model_changes():
    """The twin follows replaced tensors, changed module settings and a changed config (reference:
    the model's own generate)."""
    from dgt_interp.models import build_diffusion

    model = build_diffusion(seed=1)
    b = prompt_batch(["12+34="])

    def same_as_generate():
        torch.manual_seed(3)
        want = model.generate(b["input_ids"], max_denoising_steps=4).sequences
        traj = capture(model, b["input_ids"], seed=3, names="blocks.*.hook_resid_post", max_denoising_steps=4)
        return torch.equal(traj.sequences, want)

    assert same_as_generate()
    first = bridge_for(model, "blocks")
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight * -1.0)  # a new tensor
    assert same_as_generate() and bridge_for(model, "blocks") is not first
    second = bridge_for(model, "blocks")
    model.model.decoder.layers[0].self_attn.scaling = 0.5  # a module setting
    assert same_as_generate() and bridge_for(model, "blocks") is not second
    third = bridge_for(model, "blocks")
    model.config.get_text_config().final_logit_softcapping = 3.0  # the config
    assert same_as_generate() and bridge_for(model, "blocks") is not third


def test_nnsight_one_step_run_equals_tl(tiny_diffusion):
    """Regression: a run of one decoder pass made nnsight hand back the bare tensor (not a list of one call), and
    the backend refused it as '2 calls for 1 steps'. Both backends now give identical tensors there too."""
    b = prompt_batch(["12+34=", "5+6="])
    kw = dict(attention_mask=b["attention_mask"], seed=3, names="blocks.*.hook_resid_post", max_new_tokens=8,
              max_denoising_steps=1)
    tl, ns = capture(tiny_diffusion, b["input_ids"], **kw), capture(tiny_diffusion, b["input_ids"], backend="nnsight", **kw)
    assert tl.n_steps == ns.n_steps == 1
    for n in tl.names:
        assert torch.equal(tl[n], ns[n]), n


@pytest.mark.parametrize("which", ["diffusion", "ar"])
def test_nnsight_head_split_hooks_equal_tl(which, tiny_diffusion, tiny_ar):
    """Regression: `attn.hook_q/k/z` carry a TL hook conversion (split into heads) that TL hooks see and nnsight,
    reading the module's raw output, did not: nnsight gave `[.., n_heads * d_head]` against TL's
    `[.., head, d_head]`. Both now give the same tensor, and per-head patching works from either."""
    model = tiny_diffusion if which == "diffusion" else tiny_ar
    b = prompt_batch(["12+34=", "5+6="])
    names = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_q", "blocks.1.attn.hook_k"]
    kw = dict(attention_mask=b["attention_mask"], names=names, max_new_tokens=8)
    if which == "diffusion":
        kw["max_denoising_steps"] = 2
    tl = capture(model, b["input_ids"], backend="tl", **kw)
    ns = capture(model, b["input_ids"], backend="nnsight", **kw)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    assert tl["blocks.0.attn.hook_z"].shape[-2:] == (cfg.num_attention_heads, cfg.head_dim)
    for n in names:
        assert ns[n].shape == tl[n].shape and torch.equal(ns[n], tl[n]), n
