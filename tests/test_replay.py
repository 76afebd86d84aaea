"""`run_step`: one recorded denoising step re-run from its recorded inputs equals the recorded step bit for bit
(no tolerance: the same decoder forward on the same inputs), on a random-init and a zoo model, with TL and nnsight;
hooks on a re-run step equal the same hooks applied inside `generate` at that step (`capture(fwd_hooks=, hook_steps=)`).
"""

from __future__ import annotations

import pytest
import torch

from dgt_interp import capture
from dgt_interp.evaluate import prompt_batch
from dgt_interp.replay import ReplayError

NAMES = ["blocks.*.hook_resid_post", "blocks.0.mlp.hook_out", "blocks.1.hook_attn_out", "self_cond.hook_signal"]
PROMPTS = ["12+34=", "5+6=", "999+1="]


def _capture(model, record, names=NAMES, **kw):
    b = prompt_batch(PROMPTS)
    return capture(model, b["input_ids"], attention_mask=b["attention_mask"], seed=3, names=names, record=record,
                   max_new_tokens=16, **kw)


def _assert_step_equal(traj, ref, steps, backend="tl"):
    """Every step in `steps` re-run on `traj` equals `ref`'s recorded raw logits and activations exactly."""
    for s in steps:
        out = traj.run_step(s, names=NAMES, backend=backend)
        i = ref.step_index(s)
        assert torch.equal(out.logits, ref["logits"][i]), (s, out.self_conditioning)
        for n in ref.names:
            if n in out.cache.cache_dict:
                assert torch.equal(out.cache[n], ref[n][i]), (s, n)
        assert set(out.cache.cache_dict) >= {n for n in ref.names if n not in ("logits", "processed_logits")
                                             and n != "self_cond.hook_logits_in"}


@pytest.fixture(scope="module")
def tiny_runs(tiny_diffusion):
    full = _capture(tiny_diffusion, ("logits", "processed_logits"))
    raw = _capture(tiny_diffusion, ("logits",))
    bare = _capture(tiny_diffusion, (), names="blocks.0.hook_resid_post")
    assert torch.equal(full.sequences, bare.sequences)  # the same run three times (seeded)
    return full, raw, bare


def test_every_step_equals_recorded_tiny(tiny_runs):
    """Two canvases (the encoder re-run over an emitted canvas), self-conditioning from processed_logits."""
    full, _, _ = tiny_runs
    assert int(full.records["canvas"].max()) >= 1
    _assert_step_equal(full, full, range(full.n_steps))
    assert full.run_step(1).self_conditioning == "recorded processed_logits"
    assert full.run_step(0).self_conditioning == "none"


def test_self_conditioning_rederived_from_raw_logits_or_rerun(tiny_runs):
    full, raw, bare = tiny_runs
    _assert_step_equal(raw, full, range(raw.n_steps))
    assert raw.run_step(2).self_conditioning == "recorded logits"
    last = bare.canvas_steps(0)[-1]
    out = bare.run_step(last, names=NAMES)
    assert out.self_conditioning == "re-run"
    assert torch.equal(out.logits, full["logits"][last])


def test_nnsight_backend_equals_recorded(tiny_runs):
    full, _, _ = tiny_runs
    _assert_step_equal(full, full, [0, 1, full.n_steps - 1], backend="nnsight")


def test_hooks_equal_hooks_inside_generate(tiny_diffusion, tiny_runs):
    """Zeroing layer 1's output at step 2 only: run_step's logits equal a capture with that hook at step 2."""
    full, _, _ = tiny_runs

    def zero(t, hook):
        return torch.zeros_like(t)

    hooked = _capture(tiny_diffusion, ("logits",), fwd_hooks=[("blocks.1.hook_resid_post", zero)], hook_steps=[2])
    logits = full.run_with_hooks(2, fwd_hooks=[("blocks.1.hook_resid_post", zero)])
    assert torch.equal(logits, hooked["logits"][2])
    assert not torch.equal(logits, full["logits"][2])
    logits, cache = full.run_with_cache(2, names="blocks.1.*")
    assert torch.equal(logits, full["logits"][2]) and torch.equal(cache["blocks.1.hook_resid_post"],
                                                                  full["blocks.1.hook_resid_post"][2])


def test_every_step_equals_recorded_zoo(addition_diffusion):
    """The zoo model stops rows adaptively (stability/confidence thresholds): finished rows keep old logits."""
    full = _capture(addition_diffusion, ("logits", "processed_logits"))
    assert not bool(full.records["active"].all())  # some row stopped early: the adaptive-stop path is exercised
    _assert_step_equal(full, full, range(full.n_steps))
    _assert_step_equal(full, full, [1, full.n_steps - 1], backend="nnsight")


def test_refusals(tiny_runs, tiny_ar):
    full, _, _ = tiny_runs
    with pytest.raises(ReplayError, match="out of range"):
        full.run_step(full.n_steps)
    with pytest.raises(ReplayError, match="backend"):
        full.run_step(0, backend="jax")
    b = prompt_batch(["1+2="])
    ar = capture(tiny_ar, b["input_ids"], max_new_tokens=4)
    with pytest.raises(ReplayError, match="AR twin"):
        ar.run_step(0)


def test_generate_settings_of_the_run_are_used(tiny_diffusion):
    """A run with its own temperature schedule and step count: the raw-logits path re-applies *its* schedule."""
    traj = _capture(tiny_diffusion, ("logits",), t_min=0.3, t_max=1.3, max_denoising_steps=3)
    _assert_step_equal(traj, traj, traj.canvas_steps(0))
    assert traj.run_step(1).self_conditioning == "recorded logits"
    # a row that finished in canvas 0 still runs in canvas 1 with an adaptive-stop state no record holds:
    # refused in one line naming what to record, and exact once it is recorded
    later = traj.canvas_steps(1)[1]
    assert not bool(traj.active[traj.canvas_steps(1)[0]].all())
    with pytest.raises(ReplayError, match=r"capture with names=\['self_cond.hook_logits_in'\]"):
        traj.run_step(later)
    full = _capture(tiny_diffusion, ("logits",), names=NAMES + ["self_cond.hook_logits_in"], t_min=0.3, t_max=1.3,
                    max_denoising_steps=3)
    _assert_step_equal(full, full, range(full.n_steps))
    assert full.run_step(later).self_conditioning == "recorded self_cond.hook_logits_in"
