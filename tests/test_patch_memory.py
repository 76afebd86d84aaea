"""Memory of patching at the released vocabulary: runs keep only what metrics read, copies are chunked to
a budget, and neither changes a number.

References: the runs that keep every step's logits (`record=("logits",)`, what patching recorded
before) give the values the lean runs must reproduce bit for bit; the planner's chunks are checked
against the budget it was given; real-vocabulary cases use `testing.real_vocab_model` (262,144 ids,
small width).
"""

from __future__ import annotations

import pytest
import torch

from dgt_interp import capture
from dgt_interp.capturing import CaptureBudgetError
from dgt_interp.evaluate import prompt_batch
from dgt_interp.patching import (AnswerProb, LogitDiff, Patching, Site, get_act_patch_resid_pre,
                                 get_act_patch_self_cond, metric_values)
from dgt_interp.patching.budget import estimate_patching_bytes, plan_patching
from dgt_interp.testing import REAL_VOCAB, real_vocab_model
from dgt_interp.trajectory import TrajectoryError

SEED = 3
METRIC = LogitDiff(pos=[0, 3], correct=[5, 7], wrong=[6, 9])


def ids(text):
    return prompt_batch([text])["input_ids"]


def same(a, b):
    """Bit-for-bit equal, NaN cells (hooks that do not fire) included."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_final_logits_are_the_outputs_of_every_step_logits(tiny_diffusion, tiny_ar, addition_diffusion):
    """`record=("final_logits",)` keeps exactly the logits `outputs()` selects from every step's logits: rows
    that stop early (zoo model, adaptive stopping), rows finished in an earlier canvas, several canvases, AR."""
    batch = prompt_batch(["4721+3856=", "12+7=", "999+1=", "5+5="])
    cases = [(addition_diffusion, {}), (tiny_diffusion, dict(max_denoising_steps=3)),
             (tiny_diffusion, dict(max_denoising_steps=4, max_new_tokens=24)), (tiny_ar, dict(max_new_tokens=5))]
    stopped_early = finished_before = False
    for model, kw in cases:
        full = capture(model, batch["input_ids"], attention_mask=batch["attention_mask"], seed=SEED, record=("logits",), **kw)
        lean = capture(model, batch["input_ids"], attention_mask=batch["attention_mask"], seed=SEED,
                       record=("final_logits",), **kw)
        assert "logits" not in lean.names and lean["final_logits"].shape[0] == full.n_canvases
        for a, b in zip(full.outputs(), lean.outputs()):
            assert torch.equal(a, b)
        assert torch.equal(lean.output_tokens(), full.outputs()[1])
        for s in range(full.n_steps):  # after a step: only where it is its canvas's output state
            try:
                got = lean.outputs(s)
            except TrajectoryError as e:
                assert "record=('logits',)" in str(e)
                continue
            assert all(torch.equal(a, b) for a, b in zip(full.outputs(s), got))
        if full.kind == "diffusion":
            stopped_early |= bool((~full.active[: len(full.canvas_steps(0))]).any())
            finished_before |= full.n_canvases > 1 and not bool(full.active[full.canvas_steps(1)].all())
    assert stopped_early and finished_before  # both cases were exercised


def test_lean_patching_equals_full_logit_patching(tiny_diffusion):
    """Old style (references and patched runs keeping every step's logits) vs the lean default: the same
    sweeps, metrics at a step, reference metrics and patched tokens, bit for bit."""
    lean = Patching(tiny_diffusion, ids("12+345="), ids("17+345="), seed=SEED, max_denoising_steps=3)
    full = Patching(tiny_diffusion, ids("12+345="), ids("17+345="), seed=SEED, max_denoising_steps=3,
                    record=("logits",))
    assert "logits" in full.clean.names and "logits" not in lean.clean.names
    at_step = LogitDiff(pos=[0, 3], correct=[5, 7], wrong=[6, 9], step=1)
    prob = AnswerProb(pos=[1, 2], tokens=[4, 5])
    for metric in (METRIC, at_step, prob):
        assert lean.clean_metric(metric) == full.clean_metric(metric)
        assert lean.corrupted_metric(metric) == full.corrupted_metric(metric)
        same(get_act_patch_resid_pre(lean, metric), get_act_patch_resid_pre(full, metric))
    patches = [Site("blocks.1.hook_resid_pre", s, q) for s in range(3) for q in (0, 5)]
    patches += [[Site("self_cond.hook_logits_in", 1), Site("blocks.0.hook_mlp_out", 0, slice(0, 4))]]
    for metric in (METRIC, at_step):  # the patched runs as patching recorded them before: every step's logits
        old = torch.cat([metric_values(traj, metric).view(n, 1).mean(-1)
                         for _, n, traj in lean.iter_runs(patches, record=("logits",), batch_size=4)])
        assert torch.equal(lean.run_patches(patches, metric, batch_size=4), old)
    old_tokens = torch.cat([t.outputs()[1].view(n, 1, -1) for _, n, t in lean.iter_runs(patches, record=("logits",))])
    assert torch.equal(lean.patched_tokens(patches), old_tokens)
    same(get_act_patch_self_cond(lean, METRIC), get_act_patch_self_cond(full, METRIC))


def test_clean_activations_are_kept_at_the_swept_steps_only(tiny_diffusion):
    p = Patching(tiny_diffusion, ids("12+345="), ids("17+345="), seed=SEED, max_denoising_steps=3)
    get_act_patch_resid_pre(p, METRIC, steps=[1])
    assert {s for _, s in p._acts} == {1}
    whole = Patching(tiny_diffusion, ids("12+345="), ids("17+345="), seed=SEED, max_denoising_steps=3)
    same(get_act_patch_resid_pre(p, METRIC, steps=[2]), get_act_patch_resid_pre(whole, METRIC)[2:])
    # rounding_noise draws its sites from shapes alone, then fetches the drawn steps only
    fresh = Patching(tiny_diffusion, ids("12+345="), ids("17+345="), seed=SEED, max_denoising_steps=3)
    noise = fresh.rounding_noise(METRIC, "blocks.1.hook_resid_pre", n=1)
    assert len(fresh._acts) == 1 and noise == whole.rounding_noise(METRIC, "blocks.1.hook_resid_pre", n=1)


@pytest.fixture(scope="module")
def real_vocab():
    """A Patching of the released vocabulary (canvas 16, 2 steps): one row's logits are 16 MiB."""
    model = real_vocab_model(16)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(3, REAL_VOCAB - 3, (1, 10), generator=gen)
    corrupted = clean.clone()
    corrupted[0, 5] += 1
    return Patching(model, clean, corrupted, seed=0, max_denoising_steps=2)


def test_real_vocab_chunked_sweep_equals_unchunked(real_vocab):
    """A budget of two copies splits the sweep into chunks of two; every cell equals the one-chunk sweep bit for
    bit (chunks of >= 2 copies run the same float path per row; a chunk of 1 takes another and may differ
    by rounding, which the sampler can amplify)."""
    p = real_vocab
    cells = dict(steps=[1], positions=[0, 3, 7])
    one = estimate_patching_bytes(p, hooked=["blocks.0.hook_resid_pre"]).total
    whole = get_act_patch_resid_pre(p, METRIC, **cells)
    assert p.last_plan.copies == 6  # 2 layers x 3 positions in one generate
    chunked = get_act_patch_resid_pre(p, METRIC, max_bytes=2 * one + one // 2, **cells)
    assert p.last_plan.copies == 2 and p.last_plan.n_chunks == 3
    same(whole, chunked)
    capped = get_act_patch_resid_pre(p, METRIC, batch_size=3, **cells)  # an explicit batch_size caps the chunk
    assert p.last_plan.copies == 3
    same(whole, capped)


def test_real_vocab_planner_respects_max_bytes(real_vocab):
    p = real_vocab
    one = plan_patching(p, 1, metric=METRIC, max_bytes=2**40)
    # the vocabulary dominates: the step working set and the kept output logits are [canvas, vocab] floats
    assert one.parts["step working set"] >= 16 * REAL_VOCAB * 4 * 5
    assert one.parts["kept logits + records"] >= 16 * REAL_VOCAB * 4
    assert one.per_copy == sum(one.parts.values())
    for k in range(1, 6):
        for budget in (k * one.per_copy, (k + 1) * one.per_copy - 1):
            plan = plan_patching(p, 100, metric=METRIC, max_bytes=budget, batch_size=None)
            assert plan.copies == k and plan.chunk_bytes <= budget
    assert plan_patching(p, 100, metric=METRIC, max_bytes=10 * one.per_copy, batch_size=4).copies == 4
    assert plan_patching(p, 3, metric=METRIC, max_bytes=10 * one.per_copy, batch_size=None).copies == 3
    # a metric read after a step keeps that many steps' logits; a tokens-only run keeps none
    at_step = plan_patching(p, 1, metric=LogitDiff(0, 5, 6, step=1), max_bytes=2**40)
    tokens = plan_patching(p, 1, record=(), max_bytes=2**40)
    assert tokens.per_copy < one.per_copy < at_step.per_copy


def test_real_vocab_too_small_budget_is_a_one_line_error(real_vocab):
    p = real_vocab
    one = plan_patching(p, 1, metric=METRIC, hooked=["blocks.0.hook_resid_pre"], max_bytes=2**40)
    with pytest.raises(CaptureBudgetError) as e:
        get_act_patch_resid_pre(p, METRIC, steps=[0], positions=[0], max_bytes=one.per_copy - 1)
    msg = str(e.value)
    assert "\n" not in msg and one.describe() in msg and "max_bytes=" in msg
    assert "fewer positions or steps" in msg and "larger max_bytes" in msg
    with pytest.raises(CaptureBudgetError, match="one reference run would hold"):
        Patching(p.model, p.ids["clean"], p.ids["corrupted"], seed=0, max_denoising_steps=2, max_bytes=10**6)
    with pytest.raises(ValueError, match="max_bytes=-1 must be an int"):
        p.run_patches([Site("blocks.0.hook_resid_pre", 0, 0)], METRIC, max_bytes=-1)


def test_attribution_with_lean_references_and_its_budget(tiny_diffusion, real_vocab):
    """Attribution rebuilds the output logits at the steps the metric reads: the same estimate whether the
    references keep every step's logits or the outputs only; over budget it refuses in one line."""
    from dgt_interp.attribution import attribution_patch, estimate_attribution_bytes

    lean = Patching(tiny_diffusion, ids("12+345="), ids("17+345="), seed=SEED, max_denoising_steps=3)
    full = Patching(tiny_diffusion, ids("12+345="), ids("17+345="), seed=SEED, max_denoising_steps=3,
                    record=("logits",))
    for metric in (METRIC, LogitDiff(pos=[0, 3], correct=[5, 7], wrong=[6, 9], step=1)):
        same(attribution_patch(lean, metric), attribution_patch(full, metric))
    p = real_vocab
    est = estimate_attribution_bytes(p, "blocks.0.hook_resid_pre")
    later = estimate_attribution_bytes(p, "blocks.0.hook_resid_pre", steps=[1])
    assert est.total > later.total  # the graph spans from the first selected step
    with pytest.raises(CaptureBudgetError) as e:
        attribution_patch(p, METRIC, "blocks.0.hook_resid_pre", max_bytes=est.total - 1, checkpoint=False)
    assert "\n" not in str(e.value) and est.describe() in str(e.value) and "steps=" in str(e.value)
    # at the real vocabulary, step by step needs a fraction of the one graph (2 sqrt(steps) checkpoints)
    by_step = estimate_attribution_bytes(p, "blocks.0.hook_resid_pre", checkpoint=True)
    assert by_step.total < est.total
    with pytest.raises(CaptureBudgetError) as e:
        attribution_patch(p, METRIC, "blocks.0.hook_resid_pre", max_bytes=by_step.total - 1)
    assert "\n" not in str(e.value) and by_step.describe() in str(e.value)


def test_bottleneck_maps_the_real_vocabulary_in_chunks():
    """The self-conditioning bottlenecks map positions in chunks (one output, one chunk of temporaries): the
    same numbers as mapping the whole `[batch, pos, vocab]` tensor at once."""
    from dgt_interp.bottleneck import OneHot, TopK, TopP

    logits = torch.randn(2, 8, REAL_VOCAB, generator=torch.Generator().manual_seed(0)) * 4
    for b in (TopK(1), TopK(3), TopP(0.01), OneHot()):
        assert torch.equal(b.apply(logits, chunk_elements=3 * REAL_VOCAB), b(logits).to(logits.dtype)), b.name



@pytest.mark.parametrize("which", ["tiny_diffusion", "tiny_ar"])
def test_sampler_and_records_keep_no_autograd_graph(which, request):
    """Regression: under attribution's autograd, the entropy record (`on_accept`; AR: `on_ar_scores`) kept
    every step's `[batch, pos, vocab]` graph alive to the end of the run (12 vocabulary-sized tensors per step
    at the real vocabulary, 7 after): the sampler's discrete decisions and the records save no tensor."""
    import traceback

    model = request.getfixturevalue(which)
    saved_in = []

    def pack(t):
        saved_in.extend(f.name for f in traceback.extract_stack()[:-1])
        return t

    def start_graph(t, hook):
        torch.set_grad_enabled(True)  # as attribution_patch does inside generate
        return t.detach().requires_grad_()

    kw = dict(max_new_tokens=3) if which == "tiny_ar" else dict(max_denoising_steps=3)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        capture(model, ids("12+345="), seed=SEED, record=("final_logits",), hook_steps=0,
                fwd_hooks=[("blocks.0.hook_resid_pre", start_graph)], **kw)
    assert saved_in  # the graph was recorded (the decoder's own ops)
    assert not {"accept_canvas", "on_accept", "on_ar_scores"} & set(saved_in)


def test_planner_reads_per_layer_attention_shapes_of_heterogeneous_configs():
    """Regression: at the released shapes full-attention layers have other KV heads and head dims than
    sliding ones, transformers refuses a global `head_dim` there, and the planner crashed on it. The
    KV width is read per layer; reference: each layer's own k_proj width."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DiffusionGemmaTextConfig

    from dgt_interp.models.build import diffusion_generation_config, tiny_vision_config
    from dgt_interp.models.released import random_model
    from dgt_interp.patching import Patching, estimate_patching_bytes
    from dgt_interp.patching.budget import kv_width

    text = DiffusionGemmaTextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=2, num_global_key_value_heads=1,
                                    head_dim=8, global_head_dim=16, num_experts=2, top_k_experts=1,
                                    moe_intermediate_size=16, layer_types=["sliding_attention", "full_attention"])
    config = DiffusionGemmaConfig(text_config=text, vision_config=tiny_vision_config(), canvas_length=4,
                                  image_token_id=61, boi_token_id=62, eoi_token_id=63)
    model = random_model(DiffusionGemmaForBlockDiffusion, config, dtype=torch.float32).eval()
    model.generation_config = diffusion_generation_config(max_new_tokens=4, max_denoising_steps=2)
    with pytest.raises(Exception, match="per-layer"):
        model.config.text_config.head_dim  # what the planner used to read
    widths = [layer.self_attn.k_proj.out_features for layer in model.model.decoder.layers]
    assert kv_width(model.config.text_config) == sum(widths) == 2 * 8 + 1 * 16
    ids = torch.tensor([[2, 10, 11, 12]])
    p = Patching(model, ids, torch.tensor([[2, 10, 13, 12]]), seed=0)
    est = estimate_patching_bytes(p, hooked=["blocks.1.hook_resid_post"])
    assert est.parts["forward + KV cache"] > 2 * (4 + 4) * sum(widths) * 4  # the KV cache alone, float32


def test_default_budget_is_the_free_memory_of_the_models_device(monkeypatch):
    """Regression: the default budget was always a fraction of host RAM, also for a model on a GPU, whose
    patched copies fill GPU memory. CUDA devices now read their own free memory (faked here: no GPU needed)."""
    import psutil

    from dgt_interp.patching.budget import MEMORY_FRACTION, check_max_bytes, default_max_bytes

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (6 * 2**30, 80 * 2**30))
    assert default_max_bytes("cuda:0") == int(6 * 2**30 * MEMORY_FRACTION)
    assert check_max_bytes(None, torch.device("cuda", 0)) == int(6 * 2**30 * MEMORY_FRACTION)
    ram = psutil.virtual_memory().available * MEMORY_FRACTION
    assert abs(default_max_bytes("cpu") - ram) < 0.05 * ram  # RAM moves a little between the two reads
    assert check_max_bytes(123, "cuda:0") == 123
