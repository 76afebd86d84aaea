"""Bottleneck transforms against hand-computed distributions."""

import math

import pytest
import torch

from dgt_interp.bottleneck import OneHot, TopK, TopP, Zero, as_bottleneck, is_degenerate


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
