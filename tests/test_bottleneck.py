"""Bottleneck transforms against hand-computed distributions."""

import math

import pytest
import torch

from dgt_interp.bottleneck import OneHot, TopK, TopP, Zero, as_bottleneck
from dgt_interp.evaluate import is_degenerate


def probs_of(logits):
    return logits.softmax(-1)


def test_top_k_keeps_top_mass_and_spreads_the_rest():
    p = torch.tensor([[[0.5, 0.2, 0.15, 0.1, 0.05]]])
    out = probs_of(TopK(2)(p.log()))
    rest = (1 - 0.7) / 3
    assert torch.allclose(out, torch.tensor([[[0.5, 0.2, rest, rest, rest]]]), atol=1e-6)
    assert torch.allclose(probs_of(TopK(5)(p.log())), p, atol=1e-6)  # k = V is the identity


def test_top_p_keeps_tokens_above_threshold_and_always_the_argmax():
    p = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    out = probs_of(TopP(0.12)(p.log()))
    assert torch.allclose(out, torch.tensor([[0.5, 0.2, 0.15, 0.075, 0.075]]), atol=1e-6)
    flat = torch.tensor([[0.3, 0.25, 0.25, 0.2]])
    out = probs_of(TopP(0.9)(flat.log()))  # nothing above 0.9: the argmax alone is kept
    assert torch.allclose(out, torch.tensor([[0.3, 0.7 / 3, 0.7 / 3, 0.7 / 3]]), atol=1e-6)


def test_one_hot_and_zero():
    logits = torch.randn(2, 3, 7)
    out = probs_of(OneHot()(logits))
    assert torch.equal(out, torch.nn.functional.one_hot(logits.argmax(-1), 7).float())
    (name, fn), = Zero().hooks()
    assert name == "self_cond.hook_signal" and torch.equal(fn(torch.ones(2, 3), None), torch.zeros(2, 3))


def test_parsing_and_errors():
    assert as_bottleneck("top-3") == TopK(3)
    assert as_bottleneck("top-p=0.2") == TopP(0.2)
    assert as_bottleneck("one-hot") == OneHot() and as_bottleneck("zero") == Zero()
    assert as_bottleneck("none") is None
    custom = as_bottleneck(lambda x: x * 2)
    assert torch.equal(custom(torch.ones(1, 1, 3)), 2 * torch.ones(1, 1, 3))
    with pytest.raises(ValueError, match="unknown bottleneck 'top-x'"):
        as_bottleneck("top-x")
    with pytest.raises(ValueError, match="k >= 1"):
        TopK(0)
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        as_bottleneck(lambda x: x[..., :2])(torch.ones(1, 1, 3))


def test_degenerate_outputs():
    eos = 1
    assert is_degenerate(torch.tensor([5, 6, 7]), eos)  # no EOS
    assert not is_degenerate(torch.tensor([5, 6, eos, 0]), eos)
    assert is_degenerate(torch.tensor([5, 6, 5, 6, 5, 6, 5, 6, eos]), eos)
    # a loop the reference answer itself has (sorted repeated digits) is not degenerate
    assert not is_degenerate(torch.tensor([4, 4, 4, 4, eos]), eos, reference_ids=[4, 4, 4, 4])
    assert math.isclose(probs_of(TopK(1)(torch.zeros(1, 4))).sum().item(), 1.0, rel_tol=1e-6)


# ----------------------------------------------------------------------------- inside real runs

from dgt_interp.bottleneck import Custom, bottleneck_table, format_table  # noqa: E402
from dgt_interp.sampling import sampler_settings  # noqa: E402
from dgt_interp.cli import main  # noqa: E402
from dgt_interp.evaluate import evaluate, generate_answers, prompt_batch  # noqa: E402
from dgt_interp.tasks import ADDITION  # noqa: E402

PROMPTS = ["12+34=", "999+1=", "5+5="]
FAST = dict(max_denoising_steps=5)


def test_zero_bottleneck_equals_hf_self_conditioning_mask(tiny_diffusion):
    ours = generate_answers(tiny_diffusion, PROMPTS, seed=3, fwd_hooks=Zero().hooks(), **FAST)
    batch = prompt_batch(PROMPTS)
    torch.manual_seed(3)
    ref = tiny_diffusion.generate(**batch, self_conditioning_mask=torch.zeros(3, dtype=torch.bool), **FAST)
    assert torch.equal(ours.new_ids, ref.sequences[:, batch["input_ids"].shape[1]:])


def test_identity_bottlenecks_change_nothing_and_count_the_same_steps(tiny_diffusion):
    plain = generate_answers(tiny_diffusion, PROMPTS, seed=1, **FAST)
    for b in (Custom(fn=lambda x: x, label="identity"), TopK(tiny_diffusion.config.text_config.vocab_size)):
        hooked = generate_answers(tiny_diffusion, PROMPTS, seed=1, fwd_hooks=b.hooks(), **FAST)
        assert torch.equal(hooked.new_ids, plain.new_ids)
        assert torch.equal(hooked.decoder_passes, plain.decoder_passes)


def test_one_hot_bottleneck_reaches_the_decoder(tiny_diffusion):
    plain = generate_answers(tiny_diffusion, PROMPTS, seed=1, **FAST)
    hooked = generate_answers(tiny_diffusion, PROMPTS, seed=1, fwd_hooks=OneHot().hooks(), **FAST)
    assert not torch.equal(hooked.new_ids, plain.new_ids)


def test_table_rows_and_errors(tiny_diffusion, tiny_ar, capsys):
    rows = bottleneck_table(tiny_diffusion, ADDITION, variants=["none", "zero"], samplers=["default"], n=2)
    assert [r.variant for r in rows] == ["none (continuous)", "zeroed"]
    assert all(r.n == 2 and 1 <= r.mean_steps <= 48 for r in rows)
    assert "| default | zeroed |" in format_table(rows)
    assert sampler_settings("gentle")["max_denoising_steps"] == 96
    with pytest.raises(ValueError, match="unknown sampler setting 'fast'"):
        sampler_settings("fast")
    with pytest.raises(TypeError, match="self-conditioning"):
        bottleneck_table(tiny_ar, ADDITION, n=1)
    assert main(["bottleneck", "--model", "no-such-model", "--task", "addition"]) == 2
    assert "error: model dir 'no-such-model' does not exist" in capsys.readouterr().err


def test_evaluate_with_hooks_matches_evaluate_without(tiny_diffusion):
    a = evaluate(tiny_diffusion, ADDITION, n=3, **FAST)
    b = evaluate(tiny_diffusion, ADDITION, n=3, fwd_hooks=Custom(fn=lambda x: x).hooks(), **FAST)
    assert (a.correct, a.degenerate, a.mean_decoder_passes) == (b.correct, b.degenerate, b.mean_decoder_passes)
