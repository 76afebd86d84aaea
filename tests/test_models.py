"""Tiny model builders and loading with clear errors."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM

from dgt_interp.models import (
    ModelLoadError,
    TinySize,
    build_ar,
    build_diffusion,
    load_model,
    size_of,
    text_parameter_count,
)
from dgt_interp.train import save_atomically


def test_tiny_sizes_match_the_trial_config(tiny_diffusion, tiny_ar):
    # REFERENCES.md: hidden 128, 4 layers, 4 experts top-2 -> about 1.06M text parameters.
    assert 1.0e6 < text_parameter_count(tiny_diffusion) < 1.1e6
    # The vision tower is tiny: everything but text is < 2% of the model.
    total = sum(p.numel() for p in tiny_diffusion.parameters())
    assert total - text_parameter_count(tiny_diffusion) < 0.02 * total
    text = tiny_diffusion.config.text_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_experts, text.top_k_experts) == (4, 128, 4, 2)
    assert tiny_ar.config.enable_moe_block and tiny_ar.config.num_experts == 4
    assert size_of(tiny_diffusion) == size_of(tiny_ar) == TinySize()


def test_lm_head_is_tied_and_encoder_shares_decoder_weights(tiny_diffusion):
    m = tiny_diffusion
    assert m.lm_head.weight.data_ptr() == m.model.decoder.embed_tokens.weight.data_ptr()
    enc = m.model.encoder.language_model.layers[0].self_attn.q_proj.weight
    dec = m.model.decoder.layers[0].self_attn.q_proj.weight
    assert enc.data_ptr() == dec.data_ptr()


def test_generation_config_emits_one_canvas_and_stops_at_eos(tiny_diffusion):
    gc = tiny_diffusion.generation_config
    assert gc.max_new_tokens == tiny_diffusion.config.canvas_length
    assert gc.eos_token_id == 1 and gc.pad_token_id == 0
    ids = torch.tensor([[2, 4, 13, 5, 14]])
    torch.manual_seed(0)
    out = tiny_diffusion.generate(ids)
    assert out.sequences.shape == (1, 5 + 8)


def test_save_and_load_roundtrip_with_plain_transformers(tmp_path, tiny_diffusion, tiny_ar):
    for model, cls in ((tiny_diffusion, DiffusionGemmaForBlockDiffusion), (tiny_ar, Gemma4ForCausalLM)):
        d = save_atomically(model, tmp_path / cls.__name__, {"kind": "test"})
        assert (d / "model.safetensors").is_file() and not (d / "pytorch_model.bin").exists()
        plain = cls.from_pretrained(d)  # no dgt_interp involved
        ours = load_model(d)
        assert type(ours) is cls
        for a, b in zip(model.state_dict().values(), plain.state_dict().values()):
            assert torch.equal(a, b)
        assert ours.generation_config.eos_token_id == 1
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "Gemma4ForCausalLM")) is Gemma4ForCausalLM


def test_load_errors_are_one_line_and_say_what_to_do(tmp_path, tiny_ar):
    with pytest.raises(ModelLoadError, match="does not exist.*zoo list"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path / "empty")
    d = save_atomically(tiny_ar, tmp_path / "m", {})
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupt.*re-save"):
        load_model(d)
    d = save_atomically(tiny_ar, tmp_path / "m2", {})
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="corrupt") as e:
        load_model(d)
    assert "\n" not in str(e.value)
    d = save_atomically(tiny_ar, tmp_path / "m3", {})
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no .safetensors"):
        load_model(d)
    d = save_atomically(tiny_ar, tmp_path / "m4", {})
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "bert"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="'bert' model"):
        load_model(d)


def test_unreachable_hub_name_gets_a_one_line_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot fetch 'google/no-such-model'.*local dir") as e:
        load_model("google/no-such-model")
    assert "\n" not in str(e.value)


def test_save_atomically_leaves_nothing_half_written(tmp_path, tiny_ar, monkeypatch):
    target = tmp_path / "model"
    save_atomically(tiny_ar, target, {"v": 1})
    before = sorted(p.name for p in target.iterdir())

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(tiny_ar), "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        save_atomically(tiny_ar, target, {"v": 2})
    assert sorted(p.name for p in target.iterdir()) == before  # old dir intact
    assert json.loads((target / "recipe.json").read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp dirs left


def test_builders_are_seeded():
    a, b = build_diffusion(seed=3), build_diffusion(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_ar(TinySize(hidden_size=64, num_hidden_layers=2))
    assert c.config.hidden_size == 64 and c.config.num_hidden_layers == 2


def test_gemma_attention_layout_uses_sliding_layers_with_a_full_last_layer():
    size = TinySize(attention="gemma")
    for model in (build_diffusion(size), build_ar(size)):
        types = model.config.get_text_config().layer_types
        assert types == ["sliding_attention"] * 3 + ["full_attention"]
        assert size_of(model) == size
    with pytest.raises(ValueError, match="unknown attention layout 'local'"):
        build_ar(TinySize(attention="local"))


def test_size_of_recovers_the_canvas_of_both_kinds():
    size = TinySize(canvas_length=11)
    for model in (build_diffusion(size), build_ar(size)):  # AR: the budget lives in max_new_tokens
        assert size_of(model).canvas_length == 11
