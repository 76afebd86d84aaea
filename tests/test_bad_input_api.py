"""The standing bad-input suite over the Python API: every case must fail with a one-line error of the
project's own exception type (`DgtInterpError`) that says what to do, leave the model clean (no hook on
any module, `generate` unchanged) and write nothing at a final path. (The CLI's table is in
tests/test_bad_input_cli.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import dgt_interp
from dgt_interp import DgtInterpError, Trajectory, capture, estimate_bytes
from dgt_interp.attribution import attribution_patch
from dgt_interp.causal import CausalModel, PairRuns
from dgt_interp.evaluate import prompt_batch
from dgt_interp.lens import LensResult, LogitLens, TunedLens, lens_capture
from dgt_interp.names import resolve_names
from dgt_interp.patching import (LogitDiff, Patching, Site, get_act_patch, get_act_patch_self_cond, layer_sites)
from dgt_interp.phenomena import (canvas_flips, commit_order, detect_phenomena, register_probe, token_smearing,
                                  unregister_probe)
from dgt_interp.sampling import ReplayedNoise, sampler_settings
from dgt_interp.selection import select
from dgt_interp.stats import rank_correlation
from dgt_interp.studies import StudyContext, get_study, load_study, register, rerender
from dgt_interp.testing import constructed_trajectory
from dgt_interp.tokenizer import load_tokenizer
from dgt_interp.tokenizer import prompt_batch as tok_batch


class Env:
    """Everything the cases need, built once: models, ids, a trajectory, a patching experiment."""

    def __init__(self, diff, ar, zoo, tmp: Path):
        self.diff, self.ar, self.zoo, self.tmp = diff, ar, zoo, tmp  # zoo: a trained model (stops early)
        b = prompt_batch(["12+34=", "5+6="])
        self.ids, self.mask = b["input_ids"], b["attention_mask"]
        self.one = prompt_batch(["12+345="])["input_ids"]
        self.traj = capture(diff, self.ids, attention_mask=self.mask, seed=0, names="blocks.*.hook_resid_post",
                            max_denoising_steps=3)
        self.p = Patching(diff, self.one, prompt_batch(["17+345="])["input_ids"], seed=0, max_denoising_steps=3)
        self.tok = load_tokenizer(diff)
        self.saved = tmp / "saved"
        self.traj.save(self.saved)
        (tmp / "a_file").write_text("not a dir")
        self.metric = LogitDiff(pos=0, correct=5, wrong=6)


def _raw_model():
    from transformers import DiffusionGemmaForBlockDiffusion

    from dgt_interp.models import TinySize, diffusion_config

    return DiffusionGemmaForBlockDiffusion(diffusion_config(TinySize(vocab_size=40))).eval()


def _bad_probe():
    register_probe("", lambda traj, *, eos_id=None: None)


CASES = {
    # capture: ids
    "ids as a list": lambda e: capture(e.diff, [[2, 5, 6]]),
    "float ids": lambda e: capture(e.diff, e.one.float()),
    "bool ids": lambda e: capture(e.diff, e.one.bool()),
    "uint8 ids": lambda e: capture(e.diff, e.one.to(torch.uint8)),
    "1-D ids": lambda e: capture(e.diff, e.one[0]),
    "3-D ids": lambda e: capture(e.diff, e.one[None]),
    "batch of 0": lambda e: capture(e.diff, e.one[:0]),
    "no positions": lambda e: capture(e.diff, e.one[:, :0]),
    "id past the vocabulary": lambda e: capture(e.diff, torch.tensor([[2, 32]])),
    "negative id": lambda e: capture(e.diff, torch.tensor([[2, -1]])),
    "left-padded without a mask": lambda e: capture(e.diff, e.ids),
    "mask of another shape": lambda e: capture(e.diff, e.ids, attention_mask=e.mask[:, 1:]),
    "mask as a list": lambda e: capture(e.diff, e.ids, attention_mask=e.mask.tolist()),
    # capture: names, steps, positions
    "names=123": lambda e: capture(e.diff, e.one, names=123),
    "names=[1, 2]": lambda e: capture(e.diff, e.one, names=[1, 2]),
    "unknown name": lambda e: capture(e.diff, e.one, names="blocks.0.hook_resid_pots"),
    "layer out of range": lambda e: capture(e.diff, e.one, names="blocks.9.hook_resid_post"),
    "glob matching nothing": lambda e: capture(e.diff, e.one, names="blocks.*.hook_nothing"),
    "steps=1.0": lambda e: capture(e.diff, e.one, names="blocks.0.hook_resid_post", steps=1.0),
    "steps='3'": lambda e: capture(e.diff, e.one, names="blocks.0.hook_resid_post", steps="3"),
    "steps past max": lambda e: capture(e.diff, e.one, names="blocks.0.hook_resid_post", steps=[0, 99]),
    "negative step": lambda e: capture(e.diff, e.one, names="blocks.0.hook_resid_post", steps=-1),
    "steps after the run ended": lambda e: capture(e.zoo, e.one, names="blocks.0.hook_resid_post",
                                                   steps=slice(40, 48), seed=0),
    "position 8": lambda e: capture(e.diff, e.one, names="blocks.0.hook_resid_post", positions=[8]),
    "position 1.5": lambda e: capture(e.diff, e.one, names="blocks.0.hook_resid_post", positions=1.5),
    "hook step 99": lambda e: capture(e.diff, e.one, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: t)],
                                      hook_steps=[99]),
    "hook on an unknown name": lambda e: capture(e.diff, e.one, fwd_hooks=[("blocks.0.hook_nope", lambda t, hook: t)]),
    "record='logit'": lambda e: capture(e.diff, e.one, record="logit"),
    "record=['processed']": lambda e: capture(e.diff, e.one, record=["processed"]),
    "attention pattern on the AR twin": lambda e: capture(e.ar, e.one, names="blocks.0.attn.hook_pattern"),
    # capture: storage and settings
    "dtype int64": lambda e: capture(e.diff, e.one, names="blocks.0.hook_resid_post", dtype=torch.int64),
    "dtype bool": lambda e: capture(e.diff, e.one, names="blocks.0.hook_resid_post", dtype=torch.bool),
    "dtype as a string": lambda e: capture(e.diff, e.one, names="blocks.0.hook_resid_post", dtype="bfloat16"),
    "backend jax": lambda e: capture(e.diff, e.one, backend="jax"),
    "storage cloud": lambda e: capture(e.diff, e.one, storage="cloud"),
    "disk without out_dir": lambda e: capture(e.diff, e.one, storage="disk"),
    "disk out_dir is a file": lambda e: capture(e.diff, e.one, storage="disk", out_dir=e.tmp / "a_file"),
    "max_bytes as a string": lambda e: capture(e.diff, e.one, max_bytes="10"),
    "negative max_bytes": lambda e: capture(e.diff, e.one, max_bytes=-1),
    "over max_bytes": lambda e: capture(e.diff, e.one, names="blocks.*.hook_resid_post", max_bytes=1),
    "over max_bytes on disk": lambda e: capture(e.diff, e.one, names="blocks.*.hook_resid_post", max_bytes=1,
                                                storage="disk", out_dir=e.tmp / "never"),
    "noise=5": lambda e: capture(e.diff, e.one, noise=5),
    "noise on the AR twin": lambda e: capture(e.ar, e.one, noise=ReplayedNoise(0)),
    "return_dict_in_generate": lambda e: capture(e.diff, e.one, return_dict_in_generate=False),
    "typo t_mni": lambda e: capture(e.diff, e.one, t_mni=0.1),
    "entropy_bound as a kwarg": lambda e: capture(e.diff, e.one, entropy_bound=1e-4),
    "output_scores": lambda e: capture(e.ar, e.one, output_scores=True),
    "sampler_config on the AR twin": lambda e: capture(e.ar, e.one, **sampler_settings("default")),
    "a model of another class": lambda e: capture(torch.nn.Linear(2, 2), e.one),
    "estimate with a bad name": lambda e: estimate_bytes(e.diff, e.one, names="blocks.*.hook_nope"),
    "resolve a bad name": lambda e: resolve_names(e.diff, ["self_cond.hook_nothing"]),
    "describe_names of a Linear": lambda e: dgt_interp.describe_names(torch.nn.Linear(2, 2)),
    # Trajectory
    "unrecorded name": lambda e: e.traj["blocks.0.hook_mlp_out"],
    "stack of nothing": lambda e: e.traj.stack("nope.*"),
    "step index 99": lambda e: e.traj.step_index(99),
    "cache of step 99": lambda e: e.traj.cache(99),
    "canvas 5": lambda e: e.traj.canvas_steps(5),
    "canvas -1": lambda e: e.traj.canvas_steps(-1),
    "fired of an unknown name": lambda e: e.traj.fired("nope"),
    "load a missing dir": lambda e: Trajectory.load(e.tmp / "missing"),
    "load a file": lambda e: Trajectory.load(e.tmp / "a_file"),
    "save onto a file": lambda e: e.traj.save(e.tmp / "a_file"),
    "load with another model": lambda e: Trajectory.load(e.saved, model=_raw_model()),
    "cache without a model": lambda e: Trajectory.load(e.saved).cache(0),
    "constructed from a 2-D canvas": lambda e: constructed_trajectory(torch.zeros(3, 4)),
    # tokenizer
    "prompt_batch of nothing": lambda e: tok_batch([], e.tok),
    "prompt_batch of ints": lambda e: tok_batch([1, 2], e.tok),
    "prompt outside the vocabulary": lambda e: tok_batch(["12a+3="], e.tok),
    "prompt too long": lambda e: tok_batch(["1" * 50], e.tok, max_positions=20),
    "tokenizer of a dir without one": lambda e: load_tokenizer(e.tmp),
    "tokenizer of a bare model": lambda e: load_tokenizer(_raw_model()),
    "chat=True without a chat template": lambda e: tok_batch(["1+2="], e.tok, chat=True),
    "lens_capture chat=True without a chat template": lambda e: lens_capture(e.diff, ["1+2="], chat=True),
    "prompt + new tokens past max_position_embeddings":
        lambda e: capture(e.diff, tok_batch(["1" * 121 + "="], e.tok)["input_ids"], max_denoising_steps=1),
    "prompt past max_position_embeddings with more new tokens":
        lambda e: capture(e.diff, e.one, max_new_tokens=125, max_denoising_steps=1),
    "lens_capture of a too long prompt": lambda e: lens_capture(e.diff, ["1" * 121 + "="]),
    "task prompt outside the vocabulary": lambda e: prompt_batch(["12x3="]),
    # lens
    "lens of a Linear": lambda e: LogitLens(torch.nn.Linear(2, 2)),
    "lens layer 9": lambda e: LogitLens(e.diff).run(e.traj, layers=[9]),
    "lens position 8": lambda e: LogitLens(e.diff).run(e.traj, positions=[8]),
    "lens step 7": lambda e: LogitLens(e.diff).run(e.traj, steps=[7]),
    "lens target past the vocabulary": lambda e: LogitLens(e.diff).run(e.traj, targets=[10**6]),
    "lens k=0": lambda e: LogitLens(e.diff).run(e.traj, k=0),
    "lens k=1.5": lambda e: LogitLens(e.diff).run(e.traj, k=1.5),
    "lens chunk 0": lambda e: LogitLens(e.diff).run(e.traj, chunk_elements=0),
    "lens of a trajectory without resid": lambda e: LogitLens(e.diff).run(
        capture(e.diff, e.one, seed=0, max_denoising_steps=2)),
    "lens of another model's trajectory": lambda e: LogitLens(e.ar).run(e.traj),
    "lens logits of layer 9": lambda e: LogitLens(e.diff).logits(torch.zeros(2, 128), 9),
    "tuned lens 0 buckets": lambda e: TunedLens(e.diff, step_buckets=0),
    "tuned lens from a missing dir": lambda e: TunedLens.load(e.tmp / "missing", e.diff),
    "lens result from a non-lens file": lambda e: LensResult.load(e.saved / "records.safetensors"),
    "lens_capture outside the vocabulary": lambda e: lens_capture(e.diff, ["12a="]),
    "lens_capture of nothing": lambda e: lens_capture(e.diff, []),
    # patching
    "patching prompts of other shapes": lambda e: Patching(e.diff, e.one, e.ids[:1, :5]),
    "patching float ids": lambda e: Patching(e.diff, e.one.float(), e.one.float()),
    "patching a sampling AR twin": lambda e: Patching(e.ar, e.one, e.one, do_sample=True),
    "site step 7": lambda e: e.p.run([Site("blocks.0.hook_resid_pre", 7)]),
    "site position 9": lambda e: e.p.run([Site("blocks.0.hook_resid_pre", 0, 9)]),
    "site of an unknown hook": lambda e: e.p.run([Site("blocks.0.hook_nope", 0)]),
    "site head on a headless hook": lambda e: e.p.run([Site("blocks.0.hook_resid_pre", 0, 0, head=0)]),
    "self-conditioning at step 0": lambda e: e.p.run([Site("self_cond.hook_logits_in", 0)]),
    "site step 1.5": lambda e: e.p.run([Site("blocks.0.hook_resid_pre", 1.5)]),
    "batch size 0": lambda e: e.p.run_patches([Site("blocks.0.hook_resid_pre", 0)], e.metric, batch_size=0),
    "rounding noise n=0": lambda e: e.p.rounding_noise(e.metric, n=0),
    "rounding noise of no hook": lambda e: e.p.rounding_noise(e.metric, "blocks.*.hook_nothing"),
    "layer_sites layer 9": lambda e: layer_sites(e.p, 9),
    "sweep by='x'": lambda e: get_act_patch(e.p, "blocks.*.hook_resid_pre", e.metric, by="x"),
    "sweep of heads on resid": lambda e: get_act_patch(e.p, "blocks.*.hook_resid_pre", e.metric, by="head"),
    "sweep step 9": lambda e: get_act_patch(e.p, "blocks.*.hook_resid_pre", e.metric, steps=[9]),
    "metric of the wrong shape": lambda e: e.p.clean_metric(lambda logits: logits.sum()),
    "answer tokens for other positions": lambda e: e.p.clean_metric(LogitDiff(pos=[0, 1], correct=[5, 6, 7], wrong=4)),
    "self-conditioning sweep on the AR twin": lambda e: get_act_patch_self_cond(
        Patching(e.ar, e.one, e.one, max_new_tokens=2), e.metric),
    "attribution by='x'": lambda e: attribution_patch(e.p, e.metric, by="x"),
    "attribution step 9": lambda e: attribution_patch(e.p, e.metric, steps=[9]),
    # phenomena
    "commit by='x'": lambda e: commit_order(e.traj, by="x"),
    "commit canvas 3": lambda e: commit_order(e.traj, canvas=3),
    "smearing source='x'": lambda e: token_smearing(e.traj, source="x"),
    "smearing probs without them": lambda e: token_smearing(e.traj, source="probs"),
    "canvas flips of channel x": lambda e: canvas_flips(e.diff, e.one, e.one, channels=("x",), max_denoising_steps=2),
    "canvas flips step 99": lambda e: canvas_flips(e.diff, e.one, e.one, steps=[99], max_denoising_steps=2),
    "canvas flips position 9": lambda e: canvas_flips(e.diff, e.one, e.one, positions=[9], max_denoising_steps=2),
    "probe named ''": lambda e: _bad_probe(),
    "probe named accuracy": lambda e: register_probe("accuracy", lambda traj, *, eos_id=None: None),
    "probe that is not a function": lambda e: register_probe("x", 5),
    "unregister an unknown probe": lambda e: unregister_probe("no-such-probe"),
    "detect outside the vocabulary": lambda e: detect_phenomena(e.diff, ["12a="]),
    # causal and studies
    "pair runs of nothing": lambda e: PairRuns(e.diff, []),
    "unknown high-level variable": lambda e: CausalModel(lambda p: {"a": 1}, {"b": lambda v: v["a"]}, "b")
    .counterfactual(None, None, ["zz"]),
    "unknown study": lambda e: get_study("no-such-study"),
    "register a non-study": lambda e: register(object()),
    "load a missing study file": lambda e: load_study(e.tmp / "missing.py"),
    "load a file that registers nothing": lambda e: load_study(_empty_study(e.tmp)),
    "rerender without report.json": lambda e: rerender("addition", e.tmp / "missing"),
    "study context without an AR model": lambda e: StudyContext({"diffusion": "addition-diffusion"}, None).load("ar"),
    # sampling, selection, stats
    "unknown sampler setting": lambda e: sampler_settings("fast"),
    "noise rebound to another shape": lambda e: ReplayedNoise(0).bind(10, 4, 3, "cpu").bind(11, 4, 3, "cpu"),
    "select True": lambda e: select(True, 5, "step"),
    "select a string": lambda e: select("a", 5, "step"),
    "select a float in a list": lambda e: select([1.5], 5, "step"),
    "select out of range": lambda e: select([5], 5, "step"),
    "select a missing value": lambda e: select(3, [0, 2, 4], "step"),
    "rank correlation of one cell": lambda e: rank_correlation(torch.tensor([1.0, math.nan]), torch.tensor([1.0, 2.0])),
}


def _empty_study(tmp: Path) -> Path:
    f = tmp.parent / "empty_study.py"  # beside the watched dir: writing the input is not an output
    f.write_text("x = 1\n")
    return f


PASSES = {  # documented passes: inputs that look odd but are valid
    "numpy int step": lambda e: select(np.int64(2), 5, "step") == [2],
    "0-d tensor position": lambda e: select(torch.tensor(3), 5, "position") == [3],
    "negative slice counts from the end": lambda e: select(slice(-2, None), 5, "step") == [3, 4],
}


@pytest.fixture(scope="module")
def env(tiny_diffusion, tiny_ar, addition_diffusion, tmp_path_factory):
    return Env(tiny_diffusion, tiny_ar, addition_diffusion, tmp_path_factory.mktemp("bad_input"))


@pytest.fixture(scope="module", autouse=True)
def reference(tiny_diffusion):
    """What `generate` gives before the suite: it must give the same after."""
    ids = prompt_batch(["12+34="])["input_ids"]
    torch.manual_seed(0)
    return ids, tiny_diffusion.generate(ids, max_denoising_steps=4).sequences


def _hooks(model) -> int:
    return sum(len(getattr(m, a)) for m in model.modules()
               for a in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))


def test_suite_is_large():
    assert len(CASES) + len(PASSES) >= 100


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_one_line_project_error(name, env, tiny_diffusion):
    before = sorted(p.name for p in env.tmp.iterdir())
    with pytest.raises(DgtInterpError) as e:
        CASES[name](env)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    assert len(msg) < 700, msg  # one readable line (the longest lists the valid generate settings)
    assert _hooks(tiny_diffusion) == 0 and _hooks(env.ar) == 0
    assert sorted(p.name for p in env.tmp.iterdir()) == before  # nothing written at a final path
    assert env.p.n_steps >= 1 and not any(True for _ in env.tmp.glob(".*.tmp"))


@pytest.mark.parametrize("name", list(PASSES))
def test_documented_passes(name, env):
    assert PASSES[name](env)


def test_models_are_clean_after_the_suite(reference, tiny_diffusion, tiny_ar):
    """Runs last in this file: no hook left on any module, and generate gives what it gave before."""
    assert _hooks(tiny_diffusion) == 0 and _hooks(tiny_ar) == 0
    ids, want = reference
    torch.manual_seed(0)
    assert torch.equal(tiny_diffusion.generate(ids, max_denoising_steps=4).sequences, want)
