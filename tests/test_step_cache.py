"""`StepCache` (what `traj.cache(step)` and `run_with_cache` return): TL's residual decomposition tools are
exact on DiffusionGemma. References are independent of the decomposition: the recorded logits of `generate`
(the model's own lm_head + soft-cap) and the recorded residual stream (TL hooks on the model's blocks)."""

from __future__ import annotations

import pytest
import torch

from dgt_interp import capture
from dgt_interp.evaluate import prompt_batch
from dgt_interp.step_cache import StepCacheError

NAMES = ["blocks.*.hook_resid_post", "blocks.*.hook_attn_out", "blocks.*.hook_mlp_out", "self_cond.hook_in",
         "self_cond.hook_signal", "self_cond.hook_out"]
# float32 sums of ~10 terms of size <= ~50 (pre-cap logits), then tanh: rounding differences stay far below 1e-4
ATOL = 1e-4


@pytest.fixture(scope="module")
def zoo_run(addition_diffusion):
    b = prompt_batch(["4721+3856=", "12+34=", "999+1="])
    return capture(addition_diffusion, b["input_ids"], attention_mask=b["attention_mask"], seed=0, names=NAMES,
                   record="logits", max_new_tokens=16)


def test_decomposition_sums_to_recorded_logits_at_every_step(zoo_run):
    traj = zoo_run
    assert traj.n_steps >= 3
    for step in range(traj.n_steps):
        cache = traj.cache(step)
        logits = traj["logits"][traj.step_index(step)]                     # [B, L, V] recorded by generate
        stack, labels = cache.decompose_resid(apply_ln=True, return_labels=True)
        assert labels[:2] == ["embed", "self_cond"] and labels[-1] == f"{cache.n_layers - 1}_mlp_out"
        # the raw terms sum to the recorded final residual
        torch.testing.assert_close(cache.decompose_resid().sum(0), traj["blocks.3.hook_resid_post"][step],
                                   rtol=0, atol=ATOL)
        # the normed terms through lm_head sum to the pre-cap logits; the soft-cap gives generate's logits
        w = cache.hf_model.lm_head.weight
        torch.testing.assert_close(cache.softcap(stack.sum(0) @ w.T), logits, rtol=0, atol=ATOL)
        # direct logit attribution of the argmax token: terms sum to its pre-cap logit
        tokens = logits.argmax(-1)
        attrs = cache.logit_attribution(tokens)                           # [component, B, L]
        torch.testing.assert_close(cache.softcap(attrs.sum(0)), logits.gather(-1, tokens[..., None])[..., 0],
                                   rtol=0, atol=ATOL)
        # the logit lens: the final norm applied to the last accumulated state gives the logits
        acc = cache.accumulated_resid(apply_ln=True)
        assert acc.shape[0] == cache.n_layers + 1
        torch.testing.assert_close(cache.softcap(acc[-1].float() @ w.T), logits, rtol=0, atol=ATOL)
        # decomposition up to a middle layer sums to that layer's input
        torch.testing.assert_close(cache.decompose_resid(layer=2).sum(0), traj["blocks.1.hook_resid_post"][step],
                                   rtol=0, atol=ATOL)


def test_self_conditioning_term_is_zero_without_logits(zoo_run):
    """At a canvas's first step there are no self-conditioning logits: the signal is the MLP of zeros."""
    cache = zoo_run.cache(0)
    stack, labels = cache.decompose_resid(return_labels=True)
    direct = cache["self_cond.hook_out"]
    torch.testing.assert_close(stack[0] + stack[1], direct.float(), rtol=0, atol=ATOL)


def test_refuses_in_one_line_naming_what_to_record(tiny_diffusion):
    b = prompt_batch(["12+34="])
    traj = capture(tiny_diffusion, b["input_ids"], names="blocks.1.hook_resid_post", max_denoising_steps=2)
    cache = traj.cache(0)
    with pytest.raises(StepCacheError, match=r"blocks.0.hook_resid_pre was not recorded at step 0; capture with") as e:
        cache.accumulated_resid()
    assert "\n" not in str(e.value) and isinstance(e.value, KeyError)
    traj = capture(tiny_diffusion, b["input_ids"], names=["blocks.0.hook_resid_pre", "blocks.*.hook_resid_post"],
                   max_denoising_steps=2)
    cache = traj.cache(0)
    assert cache.accumulated_resid().shape[0] == cache.n_layers + 1       # these names suffice for it
    with pytest.raises(StepCacheError, match="blocks.0.hook_attn_out was not recorded"):
        cache.decompose_resid()
    with pytest.raises(StepCacheError, match="out of range"):
        cache.accumulated_resid(layer=9)


def test_run_with_cache_decomposes_a_step_not_recorded(zoo_run):
    """A trajectory without the block outputs: re-running the step gives a cache that decomposes exactly."""
    traj = zoo_run
    logits, cache = traj.run_with_cache(1)
    attrs = cache.logit_attribution(logits.argmax(-1))
    torch.testing.assert_close(cache.softcap(attrs.sum(0)), logits.max(-1).values, rtol=0, atol=ATOL)


def test_ar_twin_keeps_transformer_lens_own_methods(tiny_ar):
    """The corrections are DiffusionGemma's: on the AR twin the cache is TL's, unchanged (no refusal)."""
    b = prompt_batch(["12+34="])
    traj = capture(tiny_ar, b["input_ids"], names=["blocks.0.hook_resid_pre", "blocks.*.hook_resid_post"],
                   max_new_tokens=3)
    cache = traj.cache(1)
    assert not cache.exact
    acc = cache.accumulated_resid()
    assert torch.equal(acc[-1], traj["blocks.3.hook_resid_post"][1]) and acc.shape[0] == 5
