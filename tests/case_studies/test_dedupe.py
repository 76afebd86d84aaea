"""The dedupe study: its causal models on known answers (pure Python), the pooled smearing measures and
the random-order baseline on constructed trajectories, and a quick end-to-end run on the zoo dedupe models."""

from __future__ import annotations

import json

import pytest
import torch

from case_studies.dedupe.hypothesis import INDEPENDENT_MODEL, J, SCAN_MODEL, dedupe_pairs, digit_at, parse
from case_studies.smear_common import _pooled, _row_parts, random_order
from dgt_interp.causal import CaseStudyError, SiteContext
from dgt_interp.phenomena import sequence_smearing
from dgt_interp.tasks import DEDUPE, EOS_ID, Problem, encode
from dgt_interp.testing import constructed_trajectory

BASE, SRC = Problem("31337254=", "317254"), Problem("1577=", "157")


def test_models_are_the_task_algorithm_and_disagree_on_interventions():
    assert parse(BASE) == (3, 1, 3, 3, 7, 2, 5, 4)
    for p in DEDUPE.problems("test", 300, seed=3):  # the task generator is the independent reference
        assert SCAN_MODEL.run(p)["answer"] == INDEPENDENT_MODEL.run(p)["answer"] == p.answer
    # o1 := 5 (source's second digit): the scan resumes after the 5 in 31337254 -> 3, 5, then 4
    assert SCAN_MODEL.counterfactual(BASE, SRC, ["o1"]) == "354"
    # independent: only position 1 changes
    assert INDEPENDENT_MODEL.counterfactual(BASE, SRC, ["o1"]) == "357254"
    with pytest.raises(CaseStudyError, match="not a dedupe prompt"):
        parse(Problem("12+3=", ""))


def test_sites_and_pairs():
    d = SiteContext("diffusion", 15, 11, 2, 6)
    assert [(s.name, s.step, s.pos) for s in digit_at(0).sites(d)] == [("blocks.0.hook_resid_post", None, J)]
    assert [s.name for s in digit_at("selfcond").sites(d)] == ["self_cond.hook_logits_in"]
    ar = SiteContext("ar", 15, 11, 2, 8)
    assert [(s.name, s.step, s.pos) for s in digit_at(1).sites(ar)] == [("blocks.1.hook_resid_post", J, 0)]
    assert [(s.name, s.step, s.pos) for s in digit_at("canvas").sites(ar)] == [("hook_embed", J + 1, 0)]
    with pytest.raises(CaseStudyError, match="model must be one of"):
        digit_at(0, "right")
    with pytest.raises(CaseStudyError, match="where must be"):
        digit_at("tokens")
    pairs = dedupe_pairs(20, seed=1)
    for b, s in pairs:
        d = s.answer[J]
        assert d in b.prompt and d != b.answer[J] and d not in b.answer[:J]
        assert SCAN_MODEL.counterfactual(b, s, ["o1"]) != b.answer  # every pair is informative for the scan model


def _ids(s: str) -> list[int]:
    return encode(s)[1:]  # without BOS


def test_pooled_mass_and_random_order_on_constructed_canvases():
    final = _ids("123") + [EOS_ID]
    shifted = [final[1], final[2], final[3], final[3]]  # step 0: the answer one position to the left
    arg = torch.tensor([[shifted, final], [final, final]]).transpose(0, 1)  # [S=2, B=2, L=4]
    traj = constructed_trajectory(arg)
    parts = _row_parts(traj, "argmax")
    # row 0, step 0: tokens 2 and 3 and EOS sit one to the left (d = -1); "1" is nowhere; 4 (p, d) pairs at d=-1
    # have final[p-1] != final[p] (p = 1, 2, 3), so the d=-1 mass at step 0 over both rows is 3 / 6
    assert _pooled(parts, 0) == pytest.approx(3 / 6)
    seq = sequence_smearing(traj, eos_id=EOS_ID)
    assert seq.smeared[:, 0].tolist() == [True, False] and not seq.smeared[:, 1].any()
    rnd = random_order(traj, seed=0)
    assert torch.equal(rnd.final_tokens(), traj.final_tokens())  # same answers, same steps
    a, m = rnd.records["argmax_canvas"], traj.records["argmax_canvas"]
    fin = traj.final_tokens()
    for s in range(2):  # the same number of tokens in place at every step (row 0, step 0: only the EOS)
        assert ((a[s] == fin).sum(-1) == (m[s] == fin).sum(-1)).all()


@pytest.mark.slow
def test_quick_run_writes_a_report(quick_study, check_rerender):
    from dgt_interp import zoo

    if not {"dedupe-diffusion", "dedupe-ar"} <= set(zoo.names()):
        pytest.skip("dedupe zoo models not shipped yet")
    rep, out = quick_study("dedupe")
    nums = json.loads((out / "report.json").read_text())
    assert set(nums) >= {"phenomena", "causal", "iia", "seconds"}
    ar = nums["phenomena"]["AR twin (greedy)"]["argmax"]
    assert ar["rows_smeared"] == 0  # AR writes each token once, in place
    check_rerender("dedupe", out)
