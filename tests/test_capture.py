"""capture(): faithful to `generate`, records what the run computed, edits through hooks, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

import dgt_interp
from dgt_interp import capture
from dgt_interp.capturing import CaptureBudgetError, CaptureError, estimate_bytes, plan_capture
from dgt_interp.evaluate import prompt_batch
from dgt_interp.names import HookNameError

PROMPTS = ["12+34=", "5+6="]


def batch(prompts=PROMPTS):
    return prompt_batch(prompts)


def reference(model, b, seed, **kw):
    """`torch.manual_seed(seed)` + the model's own generate, counting decoder forward passes."""
    calls = []
    handle = None
    if dgt_interp.models.is_diffusion(model):
        handle = model.model.decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        torch.manual_seed(seed)
        out = model.generate(**b, **kw)
    finally:
        if handle is not None:
            handle.remove()
    seqs = out.sequences if hasattr(out, "sequences") else out
    return seqs, len(calls)


SETTINGS = {
    "default-batch2": dict(prompts=PROMPTS, kw={}),
    "sampler-nondefault": dict(prompts=PROMPTS, kw=dict(
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.8), t_min=0.5, t_max=1.0, max_denoising_steps=9,
        stability_threshold=2, confidence_threshold=0.5)),
    "adaptive-stop-early": dict(prompts=PROMPTS, kw=dict(max_denoising_steps=12, stability_threshold=0,
                                                        confidence_threshold=5.0)),
    "two-canvases": dict(prompts=PROMPTS, kw=dict(max_new_tokens=16, max_denoising_steps=10)),
    "three-canvases-batch1": dict(prompts=PROMPTS[:1], kw=dict(max_new_tokens=20, max_denoising_steps=5, t_min=0.2)),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_faithful_to_generate_random_init(tiny_diffusion, setting):
    s = SETTINGS[setting]
    b = batch(s["prompts"])
    ref, n_forward = reference(tiny_diffusion, b, 7, **s["kw"])
    traj = capture(tiny_diffusion, b["input_ids"], attention_mask=b["attention_mask"], seed=7,
                   names="blocks.*.hook_resid_post", **s["kw"])
    assert torch.equal(traj.sequences, ref)
    assert traj.n_steps == n_forward
    assert traj.recorded_steps == list(range(n_forward))
    # each canvas's last argmax canvas is what generate appended (rows still running)
    p, length = b["input_ids"].shape[1], tiny_diffusion.config.canvas_length
    canvases = traj.canvas.tolist()
    for c in sorted(set(canvases)):
        last = max(i for i, x in enumerate(canvases) if x == c)
        emitted = traj.sequences[:, p + c * length: p + (c + 1) * length]
        keep = emitted != 0  # pad replaces tokens after EOS and whole canvases of finished rows
        assert torch.equal(traj.argmax_canvas[last][keep], emitted[keep])
    if setting == "adaptive-stop-early":
        assert traj.n_steps < 12


def test_sampler_records_are_consistent(tiny_diffusion):
    b = batch()
    traj = capture(tiny_diffusion, b["input_ids"], attention_mask=b["attention_mask"], seed=1, max_denoising_steps=6)
    assert traj.cur_step.tolist() == [6, 5, 4, 3, 2, 1]
    for s in range(traj.n_steps - 1):
        acc = traj.accepted[s]
        # accepted positions carry the sampled token into the next input canvas; the rest are re-noised
        assert torch.equal(traj.input_canvas[s + 1][acc], traj.sampled_canvas[s][acc])
    assert traj.has_self_cond[0].tolist() == [False, False] and traj.has_self_cond[1:].all()
    assert (traj.entropy >= 0).all()


def test_logits_equal_model_forward_and_lens_is_exact(tiny_diffusion):
    """Recorded logits at each step equal the model's own forward on that step's inputs."""
    b = batch(PROMPTS[:1])
    traj = capture(tiny_diffusion, b["input_ids"], seed=2, max_denoising_steps=4,
                   names=["blocks.0.hook_resid_pre", "blocks.*.hook_resid_post", "self_cond.hook_logits_in"],
                   record=["logits", "processed_logits"])
    text = tiny_diffusion.config.get_text_config()
    for s in range(traj.n_steps):
        sc = traj["processed_logits"][s - 1] if s else None
        with torch.no_grad():
            out = tiny_diffusion(input_ids=b["input_ids"], decoder_input_ids=traj.input_canvas[s],
                                 self_conditioning_logits=sc, cache=DynamicCache(config=text))
        torch.testing.assert_close(traj["logits"][s], out.logits, rtol=0, atol=1e-5)
        temp = 0.4 + (0.8 - 0.4) * int(traj.cur_step[s]) / 4
        torch.testing.assert_close(traj["processed_logits"][s], traj["logits"][s] / temp)
        if s:
            assert torch.equal(traj["self_cond.hook_logits_in"][s], traj["processed_logits"][s - 1])
        # TL's accumulated_resid(apply_ln=True) + unembed + soft-cap reproduces the logits exactly
        final = traj.cache(s).accumulated_resid(apply_ln=True)[-1]
        cap = text.final_logit_softcapping
        with torch.no_grad():
            lens = torch.tanh(tiny_diffusion.lm_head(final) / cap) * cap
        torch.testing.assert_close(lens, traj["logits"][s], rtol=0, atol=1e-5)
    assert traj.fired("self_cond.hook_logits_in").tolist() == [False, True, True, True]


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_attention_patterns_equal_hf_eager_attentions(tiny_diffusion, backend):
    """Naming attn.hook_pattern runs TL's eager attention; on a left-padded batch the run stays `generate`'s
    and each step's patterns equal HF's own eager `output_attentions` on that step's inputs."""
    import copy

    b = batch(["12+34=", "5+6="])
    traj = capture(tiny_diffusion, b["input_ids"], attention_mask=b["attention_mask"], seed=0, max_denoising_steps=4,
                   names="blocks.*.attn.hook_pattern", record="processed_logits", backend=backend)
    torch.manual_seed(0)
    assert torch.equal(traj.sequences, tiny_diffusion.generate(**b, max_denoising_steps=4).sequences)
    eager = copy.deepcopy(tiny_diffusion)
    eager.set_attn_implementation("eager")
    canvas = tiny_diffusion.config.canvas_length
    decoder_mask = torch.cat([b["attention_mask"], torch.ones_like(b["attention_mask"][:, :1]).expand(-1, canvas)], 1)
    patterns = traj.stack("blocks.*.attn.hook_pattern")  # [step, layer, batch, head, canvas, prompt + canvas]
    for s in range(traj.n_steps):
        with torch.no_grad():
            out = eager(input_ids=b["input_ids"], attention_mask=b["attention_mask"], decoder_input_ids=traj.input_canvas[s],
                        decoder_attention_mask=decoder_mask, output_attentions=True,
                        self_conditioning_logits=traj["processed_logits"][s - 1] if s else None)
        torch.testing.assert_close(patterns[s], torch.stack(out.attentions), rtol=0, atol=1e-6)
    assert patterns[:, :, 1, :, :, 0].abs().max() == 0  # row 1's left pad gets no attention
    assert "blocks.0.attn.hook_pattern" in dgt_interp.list_names(tiny_diffusion)


def test_same_seed_same_trajectory(tiny_diffusion):
    b = batch()
    kw = dict(attention_mask=b["attention_mask"], names="blocks.1.hook_resid_post", max_denoising_steps=5)
    t1, t2 = capture(tiny_diffusion, b["input_ids"], seed=3, **kw), capture(tiny_diffusion, b["input_ids"], seed=3, **kw)
    t3 = capture(tiny_diffusion, b["input_ids"], seed=4, **kw)
    for k in t1.records:
        assert torch.equal(t1.records[k], t2.records[k])
    assert torch.equal(t1["blocks.1.hook_resid_post"], t2["blocks.1.hook_resid_post"])
    assert not torch.equal(t1.input_canvas, t3.input_canvas)


def test_steps_positions_dtype_selection(tiny_diffusion):
    b = batch()
    traj = capture(tiny_diffusion, b["input_ids"], attention_mask=b["attention_mask"], seed=0, max_denoising_steps=6,
                   names="blocks.*.hook_resid_post", steps=slice(1, 5, 2), positions=[0, 3], dtype=torch.bfloat16)
    full = capture(tiny_diffusion, b["input_ids"], attention_mask=b["attention_mask"], seed=0, max_denoising_steps=6,
                   names="blocks.*.hook_resid_post")
    assert traj.recorded_steps == [1, 3]
    x = traj.stack("blocks.*.hook_resid_post")
    assert x.shape == (2, 4, 2, 2, 128) and x.dtype == torch.bfloat16
    assert torch.equal(x, full.stack("blocks.*.hook_resid_post")[[1, 3]][:, :, :, [0, 3]].to(torch.bfloat16))
    assert torch.equal(traj.input_canvas, full.input_canvas)  # canvases are kept at every step


def test_memory_estimate_and_budget(tiny_diffusion):
    b = batch()
    kw = dict(attention_mask=b["attention_mask"], names="blocks.*.hook_resid_post", max_denoising_steps=5)
    plan = plan_capture(tiny_diffusion, b["input_ids"], **kw)
    traj = capture(tiny_diffusion, b["input_ids"], seed=0, **kw)
    held = sum(traj[n].numel() * traj[n].element_size() for n in traj.names)
    assert traj.n_steps == 5 and plan.activation_bytes == held  # all max steps ran: the estimate is exact
    assert estimate_bytes(tiny_diffusion, b["input_ids"], **kw) >= traj.nbytes
    assert plan_capture(tiny_diffusion, b["input_ids"], dtype=torch.bfloat16, **kw).activation_bytes == held // 2
    with pytest.raises(CaptureBudgetError) as e:
        capture(tiny_diffusion, b["input_ids"], max_bytes=1000, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "max_bytes" in msg and "positions=" in msg and "dtype" in msg and "storage='disk'" in msg


def test_self_conditioning_signal_hook_is_editable(tiny_diffusion):
    """Zeroing the added signal == generate with self-conditioning switched off (HF's own mask)."""
    b = batch()
    kw = dict(max_denoising_steps=8)
    off, _ = reference(tiny_diffusion, b, 5, self_conditioning_mask=torch.zeros(2, dtype=torch.bool), **kw)
    clean, _ = reference(tiny_diffusion, b, 5, **kw)
    traj = capture(tiny_diffusion, b["input_ids"], attention_mask=b["attention_mask"], seed=5,
                   fwd_hooks=[("self_cond.hook_signal", lambda t, hook: torch.zeros_like(t))], **kw)
    assert torch.equal(traj.sequences, off)
    assert not torch.equal(off, clean)


def test_self_conditioning_logits_hook_is_editable(tiny_diffusion):
    """A one-hot bottleneck on `self_cond.hook_logits_in` reaches the soft embedding and changes the run."""
    b = batch()
    emb = tiny_diffusion.model.decoder.embed_tokens
    one_hot = lambda t, hook: torch.where(t == t.max(-1, keepdim=True).values, 0.0, -1e9)  # noqa: E731
    kw = dict(attention_mask=b["attention_mask"], seed=5, max_denoising_steps=8,
              names=["self_cond.hook_logits_in", "self_cond.hook_soft_embed"])
    edited = capture(tiny_diffusion, b["input_ids"], fwd_hooks=[("self_cond.hook_logits_in", one_hot)], hook_steps=[2], **kw)
    clean = capture(tiny_diffusion, b["input_ids"], **kw)
    idx = edited["self_cond.hook_logits_in"][2].argmax(-1)
    expected = emb.weight[idx] * emb.embed_scale
    torch.testing.assert_close(edited["self_cond.hook_soft_embed"][2], expected.detach())
    # identical until the edit takes effect (the decoder pass of step 2)
    assert torch.equal(edited.input_canvas[:3], clean.input_canvas[:3])
    assert torch.equal(edited.sampled_canvas[:2], clean.sampled_canvas[:2])
    assert not torch.equal(edited["self_cond.hook_soft_embed"][2], clean["self_cond.hook_soft_embed"][2])
    assert not torch.equal(edited.records["sampled_canvas"][3:], clean.records["sampled_canvas"][3:])


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_hooks_never_leak(tiny_diffusion, backend):
    b = batch()
    kw = dict(max_denoising_steps=6)
    clean, _ = reference(tiny_diffusion, b, 9, **kw)
    kw["attention_mask"] = b["attention_mask"]

    def boom(t, hook, step):
        if step == 2:
            raise RuntimeError("user hook failed")

    with pytest.raises(RuntimeError, match="user hook failed"):
        capture(tiny_diffusion, b["input_ids"], seed=9, names="blocks.*.hook_resid_post", backend=backend,
                fwd_hooks=[("blocks.1.hook_resid_post", boom)], **kw)
    again, _ = reference(tiny_diffusion, b, 9, max_denoising_steps=6)
    assert torch.equal(again, clean)
    traj = capture(tiny_diffusion, b["input_ids"], seed=9, names="blocks.*.hook_resid_post", **kw)
    assert torch.equal(traj.sequences, clean) and traj.n_steps == 6
    from dgt_interp.backends.tl import bridge_for

    for level in ("blocks", "resid", "full"):
        bridged = bridge_for(tiny_diffusion, level)
        assert all(not p._forward_hooks for p in bridged.bridge.hook_dict.values())
        assert "_denoising_step" not in bridged.twin.__dict__


def test_user_model_is_not_modified(tiny_diffusion):
    before = [type(m) for m in tiny_diffusion.modules()]
    b = batch()
    capture(tiny_diffusion, b["input_ids"], attention_mask=b["attention_mask"], names="blocks.0.attn.hook_out",
            max_denoising_steps=2)
    assert [type(m) for m in tiny_diffusion.modules()] == before


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_bad_input_errors(tiny_diffusion):
    ids = batch(PROMPTS[:1])["input_ids"]
    with pytest.raises(HookNameError) as e:
        capture(tiny_diffusion, ids, names="blocks.0.hook_resid_pst")
    assert "blocks.0.hook_resid_post" in _one_line(e)
    with pytest.raises(HookNameError) as e:
        capture(tiny_diffusion, ids, names="blocks.7.hook_resid_post")
    assert "0..3" in _one_line(e)
    with pytest.raises(CaptureError) as e:
        capture(tiny_diffusion, ids, steps=[100], max_denoising_steps=10)
    assert "0..9" in _one_line(e)
    with pytest.raises(CaptureError) as e:
        capture(tiny_diffusion, ids, positions=[8])
    assert "0..7" in _one_line(e)
    with pytest.raises(TypeError) as e:
        capture(torch.nn.Linear(2, 2), ids)
    assert "load_model" in _one_line(e)
    with pytest.raises(CaptureError):
        capture(tiny_diffusion, ids, backend="jax")
    with pytest.raises(CaptureError) as e:
        capture(tiny_diffusion, ids, storage="disk")
    assert "out_dir" in _one_line(e)


def test_ar_twin_same_api(tiny_ar):
    b = batch()
    ref, _ = reference(tiny_ar, b, 0)
    traj = capture(tiny_ar, b["input_ids"], attention_mask=b["attention_mask"], seed=0,
                   names="blocks.*.hook_resid_post", record="logits")
    assert torch.equal(traj.sequences, ref)
    p = b["input_ids"].shape[1]
    n = ref.shape[1] - p
    assert traj.kind == "ar" and traj.n_steps == n
    assert torch.equal(traj.accepted.sum(-1), torch.ones(n, 2, dtype=torch.long))
    assert torch.equal(traj.sampled_canvas[-1][:, :n], ref[:, p:])
    x = traj.stack("blocks.*.hook_resid_post")
    assert x.shape == (n, 4, 2, 8, 128)
    # position s is computed at step s and stays (KV cache); later positions are still zero
    assert torch.equal(x[3, :, :, :3], x[2, :, :, :3]) and (x[2, :, :, 3:] == 0).all()
    with torch.no_grad():  # recorded logits == the model's own forward on the prefix (row 0, no padding)
        full = tiny_ar(input_ids=ref[:1]).logits
    torch.testing.assert_close(traj["logits"][-1][0, :n], full[0, p - 1:p - 1 + n], rtol=0, atol=1e-4)
    with pytest.raises(HookNameError, match="attention patterns are recorded on DiffusionGemma only"):
        capture(tiny_ar, b["input_ids"], names="blocks.0.attn.hook_pattern")


def test_usage_doc_example_runs():
    """docs/usage.md's example is executed as written (kept in sync with the code)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "docs/usage.md", "exec"), {})


def test_faithful_on_zoo_diffusion(addition_diffusion):
    """Two canvases, a batch of 3 (one canvas and other settings are covered on random-init models)."""
    kw = dict(max_new_tokens=16)
    b = prompt_batch(["123+456=", "7+88=", "999+1="])
    ref, n_forward = reference(addition_diffusion, b, 11, **kw)
    traj = capture(addition_diffusion, b["input_ids"], attention_mask=b["attention_mask"], seed=11,
                   names="blocks.*.hook_resid_post", **kw)
    assert torch.equal(traj.sequences, ref) and traj.n_steps == n_forward


def test_faithful_on_zoo_ar(addition_ar):
    b = prompt_batch(["123+456=", "7+88="])
    ref, _ = reference(addition_ar, b, 0)
    traj = capture(addition_ar, b["input_ids"], attention_mask=b["attention_mask"], names="blocks.*.hook_resid_post")
    assert torch.equal(traj.sequences, ref)
