"""Phenomenon detectors on constructed trajectories (real `Trajectory` objects) with known answers,
plus the causal detectors on the tiny random-init model (patching with replayed noise)."""

from __future__ import annotations

import math

import pytest
import torch

from dgt_interp.phenomena import (
    PhenomenaError,
    canvas_flips,
    commit_order,
    draft_effects,
    find_drafts,
    sequence_smearing,
    token_smearing,
)
from dgt_interp.stats import spearman
from dgt_interp.testing import constructed_trajectory
from dgt_interp.trajectory import Trajectory, answer_mask

N = 9  # noise / "not yet" token
FINAL = [3, 4, 5, 6, 7]


def right_to_left(length=5):
    """Step s settles position L-1-s; before that the argmax is N (and the sampler holds noise)."""
    steps = []
    for s in range(length):
        row = [FINAL[p] if p >= length - 1 - s else N for p in range(length)]
        steps.append([row])
    arg = torch.tensor(steps)
    return arg, arg != N


def test_constructed_is_a_real_trajectory():
    arg, acc = right_to_left()
    traj = constructed_trajectory(arg, accepted=acc)
    assert isinstance(traj, Trajectory) and traj.n_steps == 5 and traj.kind == "diffusion"
    assert traj.input_canvas[1, 0].tolist() == [0, 0, 0, 0, 7]  # kept after step 0: only position 4
    assert traj.sequences[0, 1:].tolist() == FINAL


def test_commit_order_right_to_left():
    arg, acc = right_to_left()
    traj = constructed_trajectory(arg, accepted=acc)
    for by in ("argmax", "sampler"):
        r = commit_order(traj, by=by)
        assert r.commit_step[0].tolist() == [4, 3, 2, 1, 0], by
        assert r.rho[0] == pytest.approx(-1.0)
    d = r.to_dict()
    assert d["mean_rho"] == pytest.approx(-1.0) and d["fraction_rho_negative"] == 1.0
    r.figure()


def test_commit_order_left_to_right_and_flicker():
    # position 0 is right at step 0, wrong at step 1, right again from step 2: commits at 2, not 0.
    arg = torch.tensor([[[3, N, N]], [[N, 4, N]], [[3, 4, 5]], [[3, 4, 5]]])
    r = commit_order(constructed_trajectory(arg))
    assert r.commit_step[0].tolist() == [2, 1, 2]
    arg = torch.tensor([[[3, N, N]], [[3, 4, N]], [[3, 4, 5]]])
    assert commit_order(constructed_trajectory(arg)).rho[0] == pytest.approx(1.0)


def test_commit_order_sampler_vs_argmax_and_renoise():
    # argmax right from step 0; the sampler keeps position 1 at step 0, loses it at step 1 (re-noised),
    # keeps it again from step 2: sampler commit = 2, argmax commit = 0.
    arg = torch.tensor([[[3, 4]]] * 4)
    acc = torch.tensor([[[True, True]], [[True, False]], [[True, True]], [[True, True]]])
    traj = constructed_trajectory(arg, accepted=acc)
    assert commit_order(traj, by="argmax").commit_step[0].tolist() == [0, 0]
    assert commit_order(traj, by="sampler").commit_step[0].tolist() == [0, 2]
    # never held at the last step -> n_steps
    acc[-1, 0, 1] = False
    assert commit_order(constructed_trajectory(arg, accepted=acc), by="sampler").commit_step[0, 1] == 4
    # all at once: no order (rho NaN)
    r = commit_order(constructed_trajectory(arg), by="argmax")
    assert math.isnan(r.rho[0]) and r.rows_with_order == 0


def test_commit_order_ar_is_chronological_and_eos_mask():
    # AR layout: step s writes position s; pad (0) after; EOS (1) at position 3 then pad.
    final = [5, 6, 7, 1, 0]
    arg = torch.tensor([[[final[p] if p <= s else 0 for p in range(5)]] for s in range(5)])
    acc = torch.stack([torch.nn.functional.one_hot(torch.tensor([s]), 5).bool() for s in range(5)])
    traj = constructed_trajectory(arg, accepted=acc, kind="ar")
    for by in ("argmax", "sampler"):
        r = commit_order(traj, by=by, eos_id=1)
        assert r.commit_step[0, :4].tolist() == [0, 1, 2, 3] and math.isnan(r.commit_step[0, 4])
        assert r.rho[0] == pytest.approx(1.0)
    assert answer_mask(torch.tensor([[5, 1, 1, 0]]), 1).tolist() == [[True, True, False, False]]
    assert answer_mask(torch.tensor([[5, 1, 1, 0]]), 1, include_eos=False).tolist() == [[True, False, False, False]]
    assert commit_order(traj, eos_id=1, include_eos=False).commit_step[0, 3].isnan()


def test_inactive_steps_are_ignored():
    # row 1 stops after step 1 (its later steps keep values but are not counted)
    arg = torch.tensor([[[N, 4], [3, N]], [[3, 4], [3, 4]], [[3, 4], [3, 4]]])
    active = torch.tensor([[True, True], [True, True], [True, False]])
    r = commit_order(constructed_trajectory(arg, active=active))
    assert r.n_steps.tolist() == [3, 2] and r.commit_step[1].tolist() == [0, 1]


def test_spearman_ties():
    assert spearman(torch.tensor([0, 0, 1, 1.0]), torch.tensor([0, 1, 2, 3.0])) == pytest.approx(0.894427, abs=1e-5)
    assert math.isnan(spearman(torch.tensor([2, 2.0]), torch.tensor([0, 1.0])))


def test_token_smearing_planted_offset():
    # token that ends at p sits at p+1 at steps 0 and 1 (planted one to the right), settles at step 2.
    final = [3, 4, 5, 6]
    shifted = [N, 3, 4, 5]
    arg = torch.tensor([[shifted], [shifted], [final]])
    t = token_smearing(constructed_trajectory(arg), max_offset=2)
    assert t.source == "argmax" and t.offsets == [-2, -1, 0, 1, 2]
    assert t.mass[0].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert t.mass[2].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert t.peak() == (0, 1, 1.0)
    # with probabilities: 0.7 at the shifted slot, 0.3 where it ends up
    v = 10
    logits = torch.full((3, 1, 4, v), -1e4)
    for s in range(3):
        for q in range(4):
            if s < 2 and q >= 1:
                logits[s, 0, q, final[q - 1]] = math.log(0.7)
                logits[s, 0, q, final[q]] = math.log(0.3)
            else:
                logits[s, 0, q, final[q]] = 0.0
    tp = token_smearing(constructed_trajectory(arg, processed_logits=logits))
    assert tp.source == "probs"
    assert tp.mass[0, tp.offsets.index(1)] == pytest.approx(0.7, abs=1e-4)
    assert tp.mass[0, tp.offsets.index(0)] == pytest.approx(0.75 * 0.3 + 0.25, abs=1e-4)  # p=0 keeps all
    t.figure(), t.to_dict()


def test_token_smearing_ignores_tokens_really_there():
    # final "3 3": the 3 at offset +1 of position 0 is the real token, not smearing -> excluded (NaN)
    arg = torch.tensor([[[3, 3]]])
    t = token_smearing(constructed_trajectory(arg), max_offset=1)
    assert math.isnan(t.mass[0, 2]) and t.counts[0, 2] == 0


def test_sequence_smearing_planted_shift():
    final = [3, 4, 5, 6, 1, 0]
    arg = torch.tensor([[[N, N, 3, 4, 5, 6]], [[4, 5, 6, 1, 0, 0]], [final], [final]])
    r = sequence_smearing(constructed_trajectory(arg), max_shift=2, eos_id=1)
    assert r.best_shift[0].tolist() == [2, -1, 0, 0]
    assert r.smeared[0].tolist() == [True, True, False, False]
    assert r.score[0, 0, r.offsets.index(2)] == pytest.approx(1.0)  # positions 0..3 fit; 4 (EOS) out of range
    d = r.to_dict()
    assert d["shift_histogram"] == {"-2": 0, "-1": 1, "1": 0, "2": 1}
    r.figure()


def test_smearing_in_a_region_only():
    # a fixed part (positions 0-2, in place from the start) then a list (3-5) drafted one position right:
    # over every position the in-place prefix wins (best shift 0); restricted to the list, the shift shows.
    final = [7, 8, 6, 3, 4, 5]
    arg = torch.tensor([[[7, 8, 6, N, 3, 4]], [final]])
    whole = sequence_smearing(constructed_trajectory(arg), max_shift=1)
    assert whole.best_shift[0].tolist() == [0, 0] and not whole.smeared.any()
    region = sequence_smearing(constructed_trajectory(arg), max_shift=1, positions=[3, 4, 5])
    assert region.best_shift[0].tolist() == [1, 0] and region.smeared[0].tolist() == [True, False]
    t = token_smearing(constructed_trajectory(arg), max_offset=1, positions=range(3, 6))
    assert t.mass[0].tolist() == [0.0, 0.0, 1.0]  # each list token one position right at step 0
    assert t.mass[1].tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(PhenomenaError, match="positions \\[6\\] out of range"):
        sequence_smearing(constructed_trajectory(arg), positions=[6])


def test_drafts_overwritten():
    # position 1 drafts 8 (kept by the sampler) at steps 0-1, overwritten by 4 at step 2;
    # position 2's argmax proposes 7 at step 0 without being kept; position 0 is never wrong.
    arg = torch.tensor([[[3, 8, 7]], [[3, 8, 5]], [[3, 4, 5]], [[3, 4, 5]]])
    acc = torch.tensor([[[True, True, False]], [[True, True, True]], [[True, True, True]], [[True, True, True]]])
    traj = constructed_trajectory(arg, accepted=acc)
    d = find_drafts(traj)
    got = {(x.step, x.pos, x.token, x.final, x.in_canvas, x.lifetime) for x in d.drafts}
    assert got == {(0, 1, 8, 4, True, 2), (0, 2, 7, 5, False, 1)}
    assert traj.input_canvas[1, 0, 1] == 8  # the kept draft is context at the next step
    assert d.to_dict()["n_in_canvas"] == 1
    d.figure()
    # the AR twin never overwrites
    arg = torch.tensor([[[5, 0]], [[5, 6]]])
    acc = torch.tensor([[[True, False]], [[False, True]]])
    assert find_drafts(constructed_trajectory(arg, accepted=acc, kind="ar")).drafts == []


def test_errors():
    arg, _ = right_to_left()
    traj = constructed_trajectory(arg)
    with pytest.raises(PhenomenaError, match="by="):
        commit_order(traj, by="nope")
    with pytest.raises(PhenomenaError, match="canvas 3"):
        commit_order(traj, canvas=3)
    with pytest.raises(PhenomenaError, match="processed_logits"):
        token_smearing(traj, source="probs")


# ---- causal detectors on a real (tiny, random-init) model -----------------------------------


def test_canvas_flips_on_model(tiny_diffusion):
    from dgt_interp import capture
    from dgt_interp.evaluate import prompt_batch

    ids = prompt_batch(["12+34=", "56+78="])["input_ids"]
    src = prompt_batch(["98+76=", "21+43="])["input_ids"]
    kw = dict(max_denoising_steps=2, max_new_tokens=8, seed=1)
    f = canvas_flips(tiny_diffusion, ids, src, steps=[1], positions=[1, 6], channels=("canvas", "self_cond"), **kw)
    assert f.flips.shape == (1, 2, 2, 8) and f.steps == [1] and f.positions == [1, 6]
    assert f.patched.all()  # self-conditioning logits differ whenever the prompts do
    s = f.later_on_earlier()
    assert set(s) >= {"later_on_earlier", "earlier_on_later", "self"}
    f.figure()
    assert torch.equal(f.base_final, f.base.argmax_canvas[-1])
    one = canvas_flips(tiny_diffusion, ids[:1], src[:1], steps=[1], positions=[1], **kw)
    assert torch.equal(one.base.sequences, capture(tiny_diffusion, ids[:1], **kw).sequences)  # batch 1: = generate
    for e in draft_effects(find_drafts(f.base), f).per_draft:
        assert e["read_at_step"] in f.steps and e["in_canvas"]


def test_canvas_flips_step_effect_matches_one_patched_run(tiny_diffusion):
    """step_flips (the argmax of the step that reads the patch) equals one `Patching.run` with the same sites,
    compared with the unpatched run's argmax at that step."""
    from dgt_interp.evaluate import prompt_batch
    from dgt_interp.patching import Patching, Site

    ids = prompt_batch(["12+34=", "56+78="])["input_ids"]
    src = prompt_batch(["98+76=", "21+43="])["input_ids"]
    kw = dict(max_denoising_steps=3, max_new_tokens=8, seed=1)
    f = canvas_flips(tiny_diffusion, ids, src, steps=[1, 2], positions=[0, 3], channels=("canvas", "self_cond"), **kw)
    p = Patching(tiny_diffusion, src, ids, **kw)
    base = p.corrupted.records["argmax_canvas"]
    for i, step in enumerate([1, 2]):
        for j, q in enumerate([0, 3]):
            run = p.run([Site("hook_embed", step, q), Site("self_cond.hook_logits_in", step, q)], record=())
            want = (run.records["argmax_canvas"][step] != base[step]) & p.corrupted.records["active"][step].bool()[:, None]
            assert torch.equal(f.step_flips[i, j], want)
            assert torch.equal(f.step_argmax[i, j], run.records["argmax_canvas"][step])
    assert f.step_flips.any()  # the check above is not vacuous on this model
    e = f.effect("step")
    assert e.shape == (2, 8) and f.later_on_earlier("step")["steps"] == [1, 2]
    with pytest.raises(PhenomenaError, match="at must be 'final' or 'step'"):
        f.effect("middle")


@pytest.mark.slow
def test_canvas_flips_identity_patch_is_noop(tiny_diffusion):
    from dgt_interp.evaluate import prompt_batch

    ids = prompt_batch(["12+34=", "56+78="])["input_ids"]
    same = canvas_flips(tiny_diffusion, ids, ids, positions=[0, 5], max_denoising_steps=3, seed=1)
    assert same.flips.shape == (3, 2, 2, 8) and not same.flips.any() and not same.patched.any()
    with pytest.raises(PhenomenaError, match="canvas step 5"):
        canvas_flips(tiny_diffusion, ids, ids, steps=[5], max_denoising_steps=3, seed=1)



def test_a_probe_registered_from_outside_runs_in_detect_phenomena(tiny_diffusion, outside_probe):
    from dgt_interp.phenomena import detect_phenomena, extra_probe_table, probes

    assert outside_probe in [p.name for p in probes()]
    traj, res = detect_phenomena(tiny_diffusion, ["12+34=", "5+6="], max_denoising_steps=3)
    assert res[outside_probe].n == len(traj.canvas_steps(0)) == traj.n_steps
    assert res["accuracy"] is None  # bare strings: no answers to score
    assert set(res) >= {"commit_argmax", "commit_sampler", "token_smearing", "sequence_smearing", "drafts"}
    table = extra_probe_table({"default": {k: v.to_dict() for k, v in res.items() if k != "accuracy"}})
    assert f"| {outside_probe} |" in table and f"| {traj.n_steps} |" in table
    assert extra_probe_table({"default": {"commit_argmax": {"mean_rho": 1.0}}}) == ""  # built-ins: no extra table


def test_canvas_flips_first_steps_caps_the_steps_both_runs_reach(tiny_diffusion):
    from dgt_interp.evaluate import prompt_batch

    ids = prompt_batch(["12+34=", "56+78="])["input_ids"]
    src = prompt_batch(["98+76=", "21+43="])["input_ids"]
    kw = dict(max_denoising_steps=3, max_new_tokens=8, seed=1, positions=[0])
    capped = canvas_flips(tiny_diffusion, ids, src, first_steps=2, **kw)
    listed = canvas_flips(tiny_diffusion, ids, src, steps=[0, 1], **kw)
    assert capped.steps == listed.steps and torch.equal(capped.flips, listed.flips)
    assert canvas_flips(tiny_diffusion, ids, src, first_steps=99, **kw).steps == \
        canvas_flips(tiny_diffusion, ids, src, **kw).steps  # a cap past the end: every step both runs reach
    with pytest.raises(PhenomenaError, match="not both"):
        canvas_flips(tiny_diffusion, ids, src, steps=[0], first_steps=1, **kw)
    with pytest.raises(PhenomenaError, match="first_steps must be a positive int"):
        canvas_flips(tiny_diffusion, ids, src, first_steps=0, **kw)
