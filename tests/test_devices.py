"""Devices, dtypes and accelerate dispatch: every primitive runs where the model is.

CPU here: a zoo model dispatched by accelerate with some layers offloaded to disk (capture, lens,
patching and attribution equal its own `generate` and the plain model), `store_device`, device
errors, bf16 end to end against float32, and device-mixing checks on the `meta` device (a second
device every machine has: an op that mixes it with CPU tensors raises just as CUDA would). The
CUDA tests at the end run only where a GPU is present.
"""

from __future__ import annotations

import pytest
import torch

from dgt_interp import capture
from dgt_interp.attribution import attribution_patch
from dgt_interp.backends.devices import execution_device, first_values, is_dispatched
from dgt_interp.backends.tl import bridge_for
from dgt_interp.bottleneck import OneHot, TopK, TopP
from dgt_interp.capturing import CaptureError
from dgt_interp.evaluate import prompt_batch
from dgt_interp.lens import LogitLens
from dgt_interp.models import ModelLoadError, diffusion_device_map, load_model
from dgt_interp.patching import AnswerProb, LogitDiff, Patching, layer_sites
from dgt_interp.patching.sweeps import get_act_patch_resid_pre
from dgt_interp.phenomena import detect_phenomena
from dgt_interp.stats import rank_correlation
from dgt_interp.trajectory import model_fingerprint, select_outputs

CLEAN, CORRUPTED = "4721+3856=", "4721+3356="
RESID = "blocks.*.hook_resid_post"


def ids(text):
    return prompt_batch([text])["input_ids"]


def offload_map():
    """Layers 0 and 2 (encoder and decoder halves, which share weights) and the final norms on disk."""
    dm = diffusion_device_map("addition-diffusion", {0: "disk", 2: "disk"})
    dm["model.decoder.norm"] = dm["model.encoder.language_model.norm"] = "disk"
    return dm


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    return load_model("addition-diffusion", device_map=offload_map(), offload_folder=tmp_path_factory.mktemp("off"))


def own_generate_resid(model, input_ids, seed=0):
    """Forward hooks on the HF decoder layers during the model's own `generate`: `[step, layer, b, pos, d]`."""
    out = []
    hooks = [layer.register_forward_hook(lambda mod, a, o: out.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.model.decoder.layers]
    try:
        torch.manual_seed(seed)
        seq = model.generate(input_ids).sequences
    finally:
        for h in hooks:
            h.remove()
    n = len(model.model.decoder.layers)
    return seq, torch.stack([torch.stack(out[i:i + n]) for i in range(0, len(out), n)])


# ---------------------------------------------------------------------------------------------
# accelerate dispatch with disk offload (CPU)
# ---------------------------------------------------------------------------------------------


def test_offloaded_model_is_really_offloaded(offloaded):
    layer0 = offloaded.model.decoder.layers[0].self_attn.q_proj.weight
    assert layer0.device.type == "meta" and is_dispatched(offloaded)
    assert offloaded.model.decoder.layers[1].self_attn.q_proj.weight.device.type == "cpu"
    assert execution_device(offloaded) == torch.device("cpu")


def test_capture_of_offloaded_model_equals_its_own_generate(offloaded, addition_diffusion):
    """Tokens and every layer's residual at every step equal forward hooks on the dispatched model's own
    `generate`, and the plain model's capture (offload moves weights, never changes values: exact)."""
    x = ids(CLEAN)
    seq, resid = own_generate_resid(offloaded, x)
    traj = capture(offloaded, x, names=RESID)
    assert torch.equal(traj.sequences, seq)
    assert torch.equal(traj.stack(RESID), resid)  # [step, layer, batch, pos, d], both from the same run
    plain = capture(addition_diffusion, x, names=RESID)
    assert torch.equal(traj.stack(RESID), plain.stack(RESID))
    nn = capture(offloaded, x, names=RESID, backend="nnsight")  # the other backend on the same dispatched twin
    assert torch.equal(nn.stack(RESID), resid)
    fine = ["blocks.0.attn.hook_z", "blocks.2.hook_mlp_out"]  # level "full": TL bridges inside offloaded layers
    got, want = capture(offloaded, x, names=fine), capture(addition_diffusion, x, names=fine)
    for name in fine:
        assert torch.equal(got[name], want[name])


def test_twin_shares_accelerate_hooks_and_offloaded_weights(offloaded):
    """The bridged twin runs through the model's own accelerate hooks (same objects), so it places and
    offloads as the model does, and the offloaded weights are not copied."""
    twin = bridge_for(offloaded, "blocks").twin
    for name, module in offloaded.named_modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is not None and "layers" in name and name.count(".") == 3:  # model.decoder.layers.i
            twin_module = twin.get_submodule(name)
            twin_module = getattr(twin_module, "original_component", twin_module)  # bridged blocks wrap it
            assert twin_module._hf_hook is hook


def test_ram_offloaded_layers_capture_exactly_and_the_twin_copies_no_weight(addition_diffusion):
    """accelerate's RAM offload (weights in a state-dict weights map, loaded for each forward; what
    "cpu" entries of a device_map do on a GPU machine), on layers 0 and 2 (both halves): capture equals
    the plain model, and the twin's hooks hold the very same weight tensors (no copy)."""
    from accelerate import cpu_offload

    model = load_model("addition-diffusion")
    for i in (0, 2):
        cpu_offload(model.model.decoder.layers[i], execution_device=torch.device("cpu"))
        cpu_offload(model.model.encoder.language_model.layers[i], execution_device=torch.device("cpu"))
    assert model.model.decoder.layers[0].self_attn.q_proj.weight.device.type == "meta"
    x = ids(CLEAN)
    traj = capture(model, x, names=RESID)
    assert torch.equal(traj.stack(RESID), capture(addition_diffusion, x, names=RESID).stack(RESID))
    hook = model.model.decoder.layers[0].self_attn.q_proj._hf_hook  # the leaf's AlignDevicesHook
    twin_layer = bridge_for(model, "blocks").twin.model.decoder.layers[0]
    twin_hook = getattr(twin_layer, "original_component", twin_layer).self_attn.q_proj._hf_hook
    key = hook.weights_map.prefix + "weight"
    assert twin_hook.weights_map.dataset[key] is hook.weights_map.dataset[key]


def test_fingerprint_reads_offloaded_weights(offloaded, addition_diffusion):
    """meta weights do not crash the fingerprint and it equals the plain model's (the same weights),
    so a trajectory captured with one is accepted with the other."""
    assert model_fingerprint(offloaded) == model_fingerprint(addition_diffusion)
    name = "model.decoder.layers.0.self_attn.q_proj.weight"
    plain = addition_diffusion.state_dict()[name]
    assert torch.equal(first_values(offloaded, name, offloaded.state_dict()[name], 64), plain.reshape(-1)[:64])


def test_lens_on_offloaded_model_equals_plain(offloaded, addition_diffusion):
    """The final norm is offloaded: the lens reads its weights from the offload; the last layer's lens
    is the model's own logits (recorded by capture) and every layer equals the plain model's lens."""
    x = ids(CLEAN)
    traj = capture(offloaded, x, names=RESID, record=["logits"])
    res = LogitLens(offloaded).run(traj, k=3)
    plain = LogitLens(addition_diffusion).run(capture(addition_diffusion, x, names=RESID), k=3)
    assert torch.equal(res.top_ids, plain.top_ids)
    torch.testing.assert_close(res.top_probs, plain.top_probs, rtol=0, atol=0)
    last = LogitLens(offloaded).logits(traj["blocks.3.hook_resid_post"], 3)
    torch.testing.assert_close(last, traj["logits"], rtol=1e-6, atol=1e-6)  # same ops, fp32 reorderings only


def test_patching_and_attribution_on_offloaded_model_equal_plain(offloaded, addition_diffusion):
    """A sweep and its attribution estimate on the dispatched model equal the plain model's exactly."""
    n = ids(CLEAN).shape[1]
    out = {}
    for key, model in (("off", offloaded), ("plain", addition_diffusion)):
        p = Patching(model, ids(CLEAN), ids(CORRUPTED), seed=0)
        c, k = p.clean.sequences[0, n:], p.corrupted.sequences[0, n:]
        pos = int((c != k).nonzero()[0])
        metric = LogitDiff(pos=pos, correct=int(c[pos]), wrong=int(k[pos]))
        out[key] = (get_act_patch_resid_pre(p, metric, steps=[0], positions=[pos, pos + 1], batch_size=64),
                    attribution_patch(p, metric, "blocks.*.hook_resid_pre", steps=[0]), p.clean.sequences)
    for a, b in zip(out["off"], out["plain"]):
        assert torch.equal(torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0))


def test_bottleneck_and_probes_on_offloaded_model_equal_plain(offloaded, addition_diffusion):
    """A top-1 token bottleneck of the self-conditioning channel and the phenomena probes give the same
    run and the same probe summaries on the dispatched model as on the plain one (ids given on CPU)."""
    x = ids(CLEAN)
    runs = [capture(m, x, fwd_hooks=TopK(1).hooks()).sequences for m in (offloaded, addition_diffusion)]
    assert torch.equal(*runs)
    found = [detect_phenomena(m, [CLEAN, "12+5="])[1] for m in (offloaded, addition_diffusion)]
    summaries = [{k: v.to_dict().get("summary") for k, v in f.items() if hasattr(v, "to_dict")} for f in found]
    assert summaries[0] == summaries[1] and summaries[0]


# ---------------------------------------------------------------------------------------------
# one-line device errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"device": "cuda:7"}, "device 'cuda:7' is not available here"),
    ({"device": "tpu"}, "not available here"),
    ({"device_map": {"model": "cuda:3"}}, "device_map device 'cuda:3' is not available"),
    ({"device_map": {"lm_head": "disk"}}, "pass offload_folder"),
    ({"device": "cpu", "device_map": "auto"}, "not both"),
    ({"offload_folder": "/tmp/x"}, "need device_map"),
    ({"device_map": 3.5}, "device_map=3.5"),
    ({"device_map": "auto", "max_memory": {"cuda:9": "1GiB"}, "offload_folder": "/tmp/x"}, "max_memory device"),
])
def test_load_model_device_errors_are_one_line(kwargs, match):
    with pytest.raises(ModelLoadError, match=match) as e:
        load_model("addition-diffusion", **kwargs)
    assert "\n" not in str(e.value)


def test_auto_with_max_memory_offloads_and_captures_like_its_generate(tmp_path, addition_diffusion):
    """device_map="auto" with a max_memory that forces offload (HF's own auto placement raises an
    IndexError on DiffusionGemma's shared layers, so load_model places them: layer 0 in RAM, 1-3 on
    disk): capture equals the dispatched model's own generate and the plain model."""
    model = load_model("addition-diffusion", device_map="auto", max_memory={"cpu": 2_000_000}, offload_folder=tmp_path)
    devices = [layer.self_attn.q_proj.weight.device.type for layer in model.model.decoder.layers]
    assert devices == ["cpu", "meta", "meta", "meta"]
    x = ids(CLEAN)
    seq, resid = own_generate_resid(model, x)
    traj = capture(model, x, names=RESID)
    assert torch.equal(traj.sequences, seq) and torch.equal(traj.stack(RESID), resid)
    assert torch.equal(traj.stack(RESID), capture(addition_diffusion, x, names=RESID).stack(RESID))
    with pytest.raises(ModelLoadError, match="do not fit") as e:  # the embeddings cannot be offloaded
        load_model("addition-diffusion", device_map="auto", max_memory={"cpu": 1000}, offload_folder=tmp_path)
    assert "\n" not in str(e.value)


def test_diffusion_device_map_refuses_offloading_the_embeddings():
    """HF's own generate samples from NaNs when the tied embedding is offloaded (it is read outside its module)."""
    with pytest.raises(ModelLoadError, match="embeddings"):
        diffusion_device_map("addition-diffusion", {0: "disk"}, rest="disk")
    with pytest.raises(ModelLoadError, match="out of range"):
        diffusion_device_map("addition-diffusion", {9: "disk"})


def test_capture_store_device(addition_diffusion, tmp_path):
    """Default: activations on CPU; store_device=None keeps them on the model's device; a missing device
    is a one-line error; disk storage needs CPU."""
    x = ids(CLEAN)
    cpu = capture(addition_diffusion, x, names=RESID)
    kept = capture(addition_diffusion, x, names=RESID, store_device=None)
    assert cpu["blocks.0.hook_resid_post"].device.type == "cpu"
    assert kept["blocks.0.hook_resid_post"].device == execution_device(addition_diffusion)
    assert torch.equal(cpu.stack(RESID), kept.stack(RESID).cpu())
    with pytest.raises(CaptureError, match="store_device= 'cuda:5' is not available here") as e:
        capture(addition_diffusion, x, names=RESID, store_device="cuda:5")
    assert "\n" not in str(e.value)
    with pytest.raises(CaptureError, match="storage='disk'"):
        capture(addition_diffusion, x, names=RESID, store_device="meta", storage="disk",
                out_dir=tmp_path / "never")


# ---------------------------------------------------------------------------------------------
# no device mixing (checked on `meta`, which refuses CPU operands as CUDA does)
# ---------------------------------------------------------------------------------------------


def test_metrics_and_output_selection_stay_on_the_logits_device():
    """`select_outputs` (attribution's gradient path), the metrics and the token bottlenecks keep to the
    device of their inputs: with meta tensors (which, like CUDA ones, refuse CPU operands in e.g.
    `torch.where`) nothing mixes devices."""
    s, b, pos, v = 3, 2, 4, 11
    logits = torch.empty(s, b, pos, v, device="meta")
    argmax = torch.empty(s, b, pos, dtype=torch.long, device="meta")
    for active in (torch.ones(s, b, dtype=torch.bool), torch.ones(s, b, dtype=torch.bool, device="meta")):
        for step in (None, 1):  # attribution passes `active` on the model's device: it used to mix in CPU aranges
            out, toks = select_outputs("diffusion", logits, argmax, active, torch.zeros(s, dtype=torch.long), step)
            assert out.device.type == "meta" and toks.device.type == "meta" and out.shape == (b, pos, v)
    assert LogitDiff(pos=[0, 1], correct=3, wrong=4)(out).device.type == "meta"
    assert AnswerProb(pos=[0, 1], tokens=[3, 4])(out).device.type == "meta"
    for bottleneck in (TopK(2), TopP(0.1), OneHot()):  # token bottlenecks act on the model's device
        assert bottleneck(out).device.type == "meta"


# ---------------------------------------------------------------------------------------------
# bfloat16 end to end
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bf16():
    return load_model("addition-diffusion", dtype=torch.bfloat16)


def test_bf16_capture_lens_patching_attribution(bf16, addition_diffusion):
    """A bf16 model: capture, lens, patching and attribution run, keep every weight bf16 (nothing upcasts
    the model), and agree with float32. Tolerance: bf16 keeps 8 mantissa bits (relative step 2^-8 =
    0.4%); over 4 layers the residual drifts to a few % of its scale, so we compare step 0 (before
    sampling can diverge) at 5% of the residual's max magnitude."""
    x = ids(CLEAN)
    t16 = capture(bf16, x, names=RESID, record=["logits"])
    t32 = capture(addition_diffusion, x, names=RESID, record=["logits"])
    r16, r32 = t16.stack(RESID)[0].float(), t32.stack(RESID)[0]
    assert t16["blocks.0.hook_resid_post"].dtype == torch.bfloat16
    assert (r16 - r32).abs().max() <= 0.05 * r32.abs().max()  # measured 2.3%
    assert torch.equal(t16.sequences, t32.sequences)  # a trained model's answer survives bf16
    lens16, lens32 = LogitLens(bf16).run(t16, steps=[0]), LogitLens(addition_diffusion).run(t32, steps=[0])
    agree = (lens16.top_ids[..., 0] == lens32.top_ids[..., 0]).float().mean()
    assert agree >= 0.9  # measured 100%; top-1 of the lens at step 0, every layer and position: rounding flips only near-ties
    n = x.shape[1]
    p16 = Patching(bf16, x, ids(CORRUPTED), seed=0)
    p32 = Patching(addition_diffusion, x, ids(CORRUPTED), seed=0)
    c, k = p32.clean.sequences[0, n:], p32.corrupted.sequences[0, n:]
    pos = int((c != k).nonzero()[0])
    metric = LogitDiff(pos=pos, correct=int(c[pos]), wrong=int(k[pos]))
    for p in (p16, p32):  # a whole-layer patch (canvas and prompt path) restores the clean answer in both dtypes
        assert torch.equal(p.run(layer_sites(p, 0)).sequences[0, n:], c)
    # logit differences are O(10); bf16 logits carry ~0.4% relative error plus drift through 4 layers
    assert abs(p16.clean_metric(metric) - p32.clean_metric(metric)) <= 0.1 * abs(p32.clean_metric(metric)) + 0.5
    a16 = attribution_patch(p16, metric, "blocks.*.hook_resid_pre", steps=[0])
    a32 = attribution_patch(p32, metric, "blocks.*.hook_resid_pre", steps=[0])
    assert torch.isfinite(a16).all()
    # cells above 10% of the largest agree in sign and within 20% (measured 12%: bf16 gradients through 4
    # layers), and all 32 cells rank alike (Spearman measured 0.93; small cells are bf16 rounding)
    top = a32.abs() >= 0.1 * a32.abs().max()
    assert (torch.sign(a16[top]) == torch.sign(a32[top])).all()
    assert ((a16[top] - a32[top]).abs() <= 0.2 * a32[top].abs()).all()
    assert rank_correlation(a16, a32) >= 0.85
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}  # nothing upcast the model


# ---------------------------------------------------------------------------------------------
# CUDA (only where a GPU is present)
# ---------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def on_cuda():
    return load_model("addition-diffusion", device="cuda")


@cuda
def test_cuda_capture_lens_patch_equal_generate(on_cuda):
    """On CUDA: capture equals the model's own generate (tokens and residuals), ids given on CPU are moved,
    activations land on CPU by default and stay on the GPU with store_device=None; the lens's last layer
    is the model's logits; patching and attribution run and nothing-patched is the corrupted run."""
    x = ids(CLEAN)
    seq, resid = own_generate_resid(on_cuda, x.cuda())
    traj = capture(on_cuda, x, names=RESID, record=["logits"])  # CPU ids: moved to the model
    assert torch.equal(traj.sequences, seq.cpu())
    assert traj["blocks.0.hook_resid_post"].device.type == "cpu"
    # CUDA's index_add (the MoE combine) may sum in a different order from run to run: fp32 rounding only
    torch.testing.assert_close(traj.stack(RESID), resid.cpu(), rtol=1e-4, atol=1e-4)
    kept = capture(on_cuda, x.cuda(), names=RESID, store_device=None)
    assert kept["blocks.0.hook_resid_post"].device.type == "cuda"
    torch.testing.assert_close(kept.stack(RESID).cpu(), traj.stack(RESID), rtol=1e-4, atol=1e-4)
    last = LogitLens(on_cuda).logits(traj["blocks.3.hook_resid_post"], 3)
    torch.testing.assert_close(last.cpu(), traj["logits"], rtol=1e-4, atol=1e-4)  # same modules, fp32
    LogitLens(on_cuda).run(kept)  # activations on the GPU
    p = Patching(on_cuda, x.cuda(), ids(CORRUPTED).cuda(), seed=0)
    assert torch.equal(p.run([]).sequences, p.corrupted.sequences)
    n = x.shape[1]
    c, k = p.clean.sequences[0, n:], p.corrupted.sequences[0, n:]
    pos = int((c != k).nonzero()[0])
    metric = LogitDiff(pos=pos, correct=int(c[pos]), wrong=int(k[pos]))
    grid = get_act_patch_resid_pre(p, metric, steps=[0])
    est = attribution_patch(p, metric, "blocks.*.hook_resid_pre", steps=[0])
    assert grid.shape == est.shape and torch.isfinite(est).all()
    capture(on_cuda, x, fwd_hooks=TopK(1).hooks())  # the token bottleneck on the GPU
    detect_phenomena(on_cuda, [CLEAN])  # every probe; CPU prompt ids moved to the model


@cuda
def test_cuda_bf16_model_runs_every_primitive():
    model = load_model("addition-diffusion", device="cuda", dtype=torch.bfloat16)
    x = ids(CLEAN).cuda()
    traj = capture(model, x, names=RESID)
    LogitLens(model).run(traj)
    p = Patching(model, x, ids(CORRUPTED).cuda(), seed=0)
    attribution_patch(p, LogitDiff(pos=0, correct=5, wrong=6), "blocks.*.hook_resid_pre", steps=[0])
    assert {q.dtype for q in model.parameters()} == {torch.bfloat16}
