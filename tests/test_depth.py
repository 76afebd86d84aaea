"""Opaque serial depth: hand-computed depths, the published reference example, composition vs brute force.

Every expected number below is worked out by hand from the cost rules (docs/depth.md), not read back
from the code: n-way contraction = ceil(log2 n) + 1, reduction over n = ceil(log2 n), elementwise = 1,
data movement = 0.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dgt_interp.depth import (
    CONST,
    DepthTracer,
    UnknownOpError,
    interpretable,
    serial_depth,
)
from dgt_interp.depth.compose import (
    DepthMap,
    ar_generation_depth,
    ar_generation_depth_bruteforce,
    diffusion_generation_depth,
    diffusion_generation_depth_bruteforce,
    diffusion_step_maps,
    trace_map,
)
from dgt_interp.models import TinySize

SMALL = TinySize(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                 num_experts=4, top_k_experts=2, moe_intermediate_size=16, intermediate_size=64,
                 max_position_embeddings=64, canvas_length=4)


def reference_mlp() -> nn.Module:
    """google-deepmind/serial_depth's README example: 1 -> 8 -> 8 -> 1, ReLU, no bias."""
    return nn.Sequential(nn.Linear(1, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.ReLU(),
                         nn.Linear(8, 1, bias=False))


# ---- the published example ----------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_reference_mlp_has_depth_11(device):
    mlp = reference_mlp().to(device)
    assert serial_depth(mlp, torch.zeros(1, device=device)) == 11


def test_reference_mlp_layer_by_layer_is_2_5_4():
    mlp = reference_mlp()
    with torch.no_grad(), DepthTracer() as tracer:
        h1 = mlp[1](mlp[0](torch.zeros(1)))  # contract 1 (1) + relu (1)
        h2 = mlp[3](mlp[2](h1))  # contract 8 (3 + 1) + relu (1)
        y = mlp[4](h2)  # contract 8 (3 + 1)
    assert [tracer.depth(h1), tracer.depth(h2) - tracer.depth(h1), tracer.depth(y) - tracer.depth(h2)] == [2, 5, 4]


# ---- hand-computed op costs --------------------------------------------------------------------


@pytest.mark.parametrize("n, expected", [(1, 1), (2, 2), (16, 5), (17, 6), (2816, 13)])
def test_matmul_contracting_n_costs_ceil_log2_n_plus_1(n, expected):
    assert serial_depth(lambda a, b: a @ b, torch.ones(3, n), torch.ones(n, 2)) == expected


def test_bmm_and_addmm_bias_only_pays_the_add():
    assert serial_depth(torch.bmm, torch.ones(2, 3, 32), torch.ones(2, 32, 4)) == 6
    # addmm: the matmul over 16 (5) then the add (1); a bias of depth 10 only pays the add: 11
    assert serial_depth(torch.addmm, torch.ones(2), torch.ones(3, 16), torch.ones(16, 2)) == 6
    assert serial_depth(torch.addmm, torch.ones(2), torch.ones(3, 16), torch.ones(16, 2), input_depths={0: 10}) == 11


@pytest.mark.parametrize(
    "fn, x, expected",
    [
        (lambda x: x.sum(), torch.ones(1000), 10),  # ceil(log2 1000)
        (lambda x: x.mean(-1), torch.ones(4, 8), 4),  # sum over 8 (3) + divide (1)
        (lambda x: x.amax(dim=1), torch.ones(3, 5), 3),
        (lambda x: x.argmax(), torch.ones(2, 8), 4),  # over all 16
        (lambda x: x.max(dim=-1).values, torch.ones(2, 8), 3),
        (lambda x: x.cumsum(0), torch.ones(9), 4),
        (lambda x: x.topk(2).values, torch.ones(3, 128), 7),
        (lambda x: x.softmax(-1), torch.ones(2, 8), 9),  # max 3, sub, exp, sum 3, div
        (lambda x: x.log_softmax(-1), torch.ones(2, 8), 10),
    ],
)
def test_reductions_cost_ceil_log2_n(fn, x, expected):
    assert serial_depth(fn, x) == expected


def test_elementwise_chain_and_data_movement():
    x = torch.ones(4, 6)
    assert serial_depth(lambda x: ((x + 1) * 2).exp().tanh(), x) == 4
    assert serial_depth(lambda x: x.reshape(6, 4).t().permute(1, 0)[1:3].contiguous(), x) == 0
    assert serial_depth(lambda x: x.to(torch.float64), x) == 1  # a dtype conversion
    assert serial_depth(lambda x: x.to(torch.float32), x) == 0  # no conversion, no op
    assert serial_depth(lambda x: torch.cat([x.exp().exp().exp(), x]), x) == 3
    assert serial_depth(lambda x: torch.where(x > 0, x, -x), x) == 2  # compare (1) then select (1)


def test_sdpa_fused_on_cpu_equals_its_decomposition_on_meta():
    # q/k: scale (1) + QK^T over head_dim 8 (4) + safe softmax over 16 keys (2*4 + 4) + PV over 16 (5) = 22
    for device in ("cpu", "meta"):
        q, k, v = (torch.ones(1, 2, 16, 8, device=device) for _ in range(3))
        assert serial_depth(F.scaled_dot_product_attention, q, k, v) == 22


def test_input_depths_and_symbolic_sources():
    w = torch.ones(4, 4)
    # x @ w (3) then + y (1): x enters with +4, y with +1
    report = serial_depth(lambda x, y: x @ w + y, torch.ones(2, 4), torch.ones(2, 4),
                          input_depths={0: "x", 1: 10}, return_report=True)
    assert report.paths == {"x": 4, CONST: 11}
    assert report.depth == 11  # x at depth 0: max(0 + 4, 10 + 1)


def test_loop_depth_is_length_times_body_and_composes():
    w = torch.ones(4, 4)

    def body(x):
        return torch.tanh(x @ w)  # contract 4 (3) + tanh (1) = 4

    def loop(x):
        for _ in range(5):
            x = body(x)
        return x

    x = torch.ones(2, 4)
    assert serial_depth(loop, x) == 20
    step, _ = trace_map(lambda: body(x), {"x": x}, lambda y: {"x": y})
    assert step.weights == {"x": {"x": 4, CONST: 4}}  # w is a constant: a path of 4 from it too
    depth = {"x": 0}
    for _ in range(5):
        depth = step.apply(depth)
    assert depth["x"] == 20


def test_interpretable_resets_depth_inside_a_trace_and_is_a_noop_outside():
    emb = torch.ones(10, 3)

    def fn(x):
        logits = (x * 2).exp()  # 2
        token = interpretable(logits.argmax(-1))  # a person reads the token: 0
        return emb[token] * 3, logits  # gather (0) + mul (1)

    report = serial_depth(fn, torch.ones(4, 10), return_report=True)
    assert report.outputs == {"0": 1, "1": 2}
    t = torch.ones(3)
    assert interpretable(t) is t


def test_partial_writes_raise_the_buffer_and_inplace_ops_update_it():
    def fn(a):
        buf = torch.zeros(4, 4)
        buf[0] = a.exp().exp().exp()  # row 0 has depth 3: the buffer's depth is raised to 3
        return buf.sum()  # + ceil(log2 16)

    assert serial_depth(fn, torch.ones(4)) == 7

    def inplace(a):
        y = a.clone()
        y.mul_(2).add_(1)
        return y

    assert serial_depth(inplace, torch.ones(3)) == 2


# ---- rule sets, unknown ops, errors ---------------------------------------------------------------


def test_reference_rules_keep_the_tools_gaps_and_corrected_rules_fix_them():
    x = torch.ones(4, 8)
    assert serial_depth(torch.erf, x, rules="reference") == 0
    assert serial_depth(torch.erf, x, rules="corrected") == 1
    # exact gelu = x/sqrt2, erf, +1, *0.5, x*: 4 + erf
    assert serial_depth(F.gelu, x, rules="reference") == 4
    assert serial_depth(F.gelu, x, rules="corrected") == 5
    assert serial_depth(lambda x: F.gelu(x, approximate="tanh"), x) == 8
    assert serial_depth(lambda x: x.sort(-1).values, x, rules="reference") == 0
    report = serial_depth(lambda x: x.sort(-1).values, x, rules="corrected", return_report=True)
    assert report.depth == 3 and any("aten.sort" in d for d in report.deviations)


def test_unknown_op_raises_one_line_or_warns_and_is_listed():
    x = torch.ones(3)
    with pytest.raises(UnknownOpError, match=r"no cost rule for aten\.special_bessel_j0.*on_unknown='warn'"):
        serial_depth(torch.special.bessel_j0, x)
    with pytest.warns(UserWarning, match="special_bessel_j0"):
        report = serial_depth(lambda x: torch.special.bessel_j0(x.exp()), x, on_unknown="warn", return_report=True)
    assert report.depth == 1 and report.unknown_ops == ["aten.special_bessel_j0 (x1)"]
    assert serial_depth(torch.special.bessel_j0, x, extra_rules={"special_bessel_j0": 3}) == 3


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown rules 'jax'; choose one of: reference, corrected"):
        serial_depth(torch.exp, torch.ones(1), rules="jax")
    with pytest.raises(ValueError, match="unknown on_unknown"):
        serial_depth(torch.exp, torch.ones(1), on_unknown="ignore")
    with pytest.raises(ValueError, match="not a keyword input"):
        serial_depth(torch.exp, torch.ones(1), input_depths={"y": 1})


# ---- the real model classes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_models():
    """Tiny DiffusionGemma and Gemma 4 on CPU and on meta (2 layers: few ops per pass)."""
    from transformers import DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM

    from dgt_interp.models.build import ar_config, diffusion_config

    models = {}
    for device in ("cpu", "meta"):
        torch.manual_seed(0)
        with torch.device(device):
            models["dg", device] = DiffusionGemmaForBlockDiffusion(diffusion_config(SMALL)).eval()
            models["ar", device] = Gemma4ForCausalLM(ar_config(SMALL)).eval()
    return models


def test_tiny_models_trace_on_cpu_and_meta_with_the_same_depth(small_models):
    from transformers import DynamicCache

    depths = {}
    for device in ("cpu", "meta"):
        dg, ar = small_models["dg", device], small_models["ar", device]
        ids = torch.zeros(1, 3, dtype=torch.long, device=device)
        canvas = torch.zeros(1, 4, dtype=torch.long, device=device)
        report = serial_depth(dg, input_ids=ids, cache=DynamicCache(config=dg.config.text_config),
                              decoder_input_ids=canvas, return_report=True)
        depths[device] = (report.outputs["logits"], serial_depth(ar, input_ids=ids))
        assert report.unknown_ops == [] and report.num_ops > 100
        assert any("grouped MoE expert matmul" in d for d in report.deviations)
    assert depths["cpu"] == depths["meta"]
    assert depths["cpu"][0] > depths["cpu"][1] > 0


def test_moe_expert_matmuls_cost_zero_only_under_reference_rules(small_models):
    ar = small_models["ar", "cpu"]
    ids = torch.zeros(1, 3, dtype=torch.long)
    reference, corrected = (serial_depth(ar, input_ids=ids, rules=r) for r in ("reference", "corrected"))
    assert corrected > reference


def test_ar_generation_composition_equals_bruteforce(small_models):
    # prompt 3, 6 new tokens: key lengths 4..8 cross a ceil(log2) bucket (4 -> 5): two decode maps
    ar = small_models["ar", "cpu"]
    composed = ar_generation_depth(ar, 3, 6)
    brute = ar_generation_depth_bruteforce(ar, 3, 6)
    assert composed.step_depths == brute.step_depths
    assert composed.traced_passes == 3 and brute.traced_passes == 6


@pytest.mark.parametrize("self_conditioning", ["opaque", "bottleneck"])
def test_diffusion_composition_equals_bruteforce(small_models, self_conditioning):
    dg = small_models["dg", "cpu"]
    composed = diffusion_generation_depth(dg, 3, 4, 3, self_conditioning=self_conditioning)
    brute = diffusion_generation_depth_bruteforce(dg, 3, 4, 3, self_conditioning=self_conditioning)
    assert composed.step_depths == brute.step_depths


def test_diffusion_opaque_channel_grows_by_one_increment_per_step(small_models):
    maps = diffusion_step_maps(small_models["dg", "meta"], 3, 4)
    naive = maps.compose(4, "opaque")
    bottleneck = maps.compose(4, "bottleneck")
    assert [b - a for a, b in zip(naive[1:], naive[2:])] == [maps.increment] * 2
    assert bottleneck[1:] == [maps.bottlenecked_step] * 3
    assert isinstance(maps.step, DepthMap) and "sc" in maps.step.weights["logits"]


# ---- presets and the command line ---------------------------------------------------------------


def test_26b_a4b_presets_match_the_released_architecture():
    from dgt_interp.depth.presets import build_preset

    dg = build_preset("diffusiongemma-26b-a4b")
    text = dg.config.text_config
    assert (text.num_hidden_layers, text.num_experts, text.top_k_experts, text.vocab_size) == (30, 128, 8, 262_144)
    assert dg.config.canvas_length == 256 and dg.dtype == torch.bfloat16
    assert all(p.device.type == "meta" for p in dg.parameters())
    ar = build_preset("gemma4-26b-a4b")
    assert (ar.config.num_hidden_layers, ar.config.num_experts, ar.config.hidden_size) == (30, 128, 2816)
    assert ar.model.layers[5].self_attn.v_proj is None  # full layers reuse K as V


def test_cli_unknown_preset_is_a_one_line_error(capsys):
    from dgt_interp.cli import main

    assert main(["depth", "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown preset 'nope'; choose one of: diffusiongemma-26b-a4b, gemma4-26b-a4b")
    assert "\n" not in err


def test_cli_compares_tiny_presets(capsys):
    from dgt_interp.cli import main

    assert main(["depth", "--preset", "gemma4-tiny", "--vs", "diffusiongemma-tiny", "--steps", "2",
                 "--prompt-len", "2", "--canvas", "2"]) == 0
    out = capsys.readouterr().out
    assert "diffusiongemma-tiny vs gemma4-tiny" in out
    assert "per-pass ratio" in out and "naive ratio" in out and "paper 28.6x" in out and "paper 1.1x" in out
