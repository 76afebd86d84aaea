"""The hop-chain study: its causal model on hand-checked answers, its sites, pairs and random-order baseline
(pure Python), and a quick end-to-end run on the zoo hop_chain models."""

from __future__ import annotations

import json

import pytest
import torch

from case_studies.hop_chain.hypothesis import HOP_MODEL, h1_at, hop_pairs
from case_studies.chain_common import random_order
from dgt_interp.causal import CaseStudyError, SiteContext
from dgt_interp.tasks import HOP_CHAIN, Problem

# f: 3->5, 5->1, 1->4, 0->2, 4->0, 2->3; x = 3: h1 = 5, h2 = 1, h3 = 4
BASE = Problem("3>5,5>1,1>4,0>2,4>0,2>3,?3=", "415")
# g: 0->1, 1->2, 2->3, 3->4, 4->5, 5->0; x = 1: h1 = 2, h2 = 3, h3 = 4
SRC = Problem("5>0,4>5,3>4,2>3,1>2,0>1,?1=", "432")


def _zoo(name):
    from dgt_interp import zoo
    from dgt_interp.models import load_model

    if name not in zoo.names():
        pytest.skip(f"zoo model {name} not shipped yet")
    return load_model(name)


def test_hop_model_chases_the_base_map_from_the_source_draft():
    assert HOP_MODEL.run(BASE)["answer"] == BASE.answer and HOP_MODEL.run(SRC)["answer"] == SRC.answer
    # h1 := 2 (the source's f(x)); then the base's f: h2 = f(2) = 3, h3 = f(3) = 5
    assert HOP_MODEL.counterfactual(BASE, SRC, ["h1"]) == "532"
    h = h1_at("canvas", "step1", compare="next")
    assert h.output_positions == (1,) and h.matches("131", "532") and not h.matches("512", "532")
    assert h1_at("both", "all", compare="chain").matches("531", "532")
    for p in HOP_CHAIN.problems("test", 50, seed=3):
        assert HOP_MODEL.run(p)["answer"] == p.answer


def test_sites():
    d = SiteContext("diffusion", 28, 4, 2, 5)
    assert [(s.name, s.step, s.pos) for s in h1_at("canvas", "step1").sites(d)] == [("hook_embed", 1, 2)]
    assert [(s.name, s.step, s.pos) for s in h1_at("both", "all", pos=0).sites(d)] == [
        ("hook_embed", None, 0), ("self_cond.hook_logits_in", None, 0)]
    assert [s.name for s in h1_at("L0").sites(d)] == ["blocks.0.hook_resid_post"]
    ar = SiteContext("ar", 28, 4, 2, 4)
    assert [(s.name, s.step, s.pos) for s in h1_at("canvas").sites(ar)] == [("hook_embed", 3, 0)]  # read after h2
    assert [(s.name, s.step, s.pos) for s in h1_at("L0").sites(ar)] == [("blocks.0.hook_resid_post", 0, 27)]
    with pytest.raises(CaseStudyError, match="channel must be one of"):
        h1_at("tokens")
    with pytest.raises(CaseStudyError, match="steps must be one of"):
        h1_at("canvas", "last")
    with pytest.raises(CaseStudyError, match="pos must be a canvas position"):
        h1_at("canvas", pos=4)


def test_pairs_differ_in_h1_and_are_held_out():
    pairs = hop_pairs(20, seed=1)
    assert len(pairs) == 20
    for b, s in pairs:
        assert HOP_MODEL.run(b)["h1"] != HOP_MODEL.run(s)["h1"]
        assert HOP_CHAIN.is_test(b.prompt) and HOP_CHAIN.is_test(s.prompt)
        # f is a permutation: another h1 gives another h2, so every pair is informative for h2
        assert HOP_MODEL.counterfactual(b, s, ["h1"])[1] != b.answer[1]
    with pytest.raises(CaseStudyError, match="at least two different"):
        hop_pairs(2, pool=[BASE])


def test_random_order_baseline_averages_every_order():
    # distinct steps: one of the 6 orders is strictly right to left; mean rho over the 6 orders is 0
    r = random_order(torch.tensor([[2.0, 1.0, 0.0], [5.0, 3.0, 4.0]]))
    assert r["fraction_right_to_left"] == pytest.approx(1 / 6) and r["mean_rho"] == pytest.approx(0.0)
    # a tie: no order is strictly right to left; all at once: rho undefined, the row only counts for the fraction
    r = random_order(torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))
    assert r["fraction_right_to_left"] == 0.0 and r["mean_rho"] == pytest.approx(0.0)


@pytest.mark.slow
def test_quick_run_writes_a_report(quick_study):
    _zoo("hop_chain-diffusion"), _zoo("hop_chain-ar")
    rep, out = quick_study("hop_chain")
    nums = json.loads((out / "report.json").read_text())
    assert set(nums) >= {"records", "iia", "step_effect", "seconds"} and (out / "report.md").is_file()
    ar = nums["records"]["AR twin (greedy)"]
    assert ar["commit"]["mean_rho"] in (1.0, None) and ar["right_to_left"]["k"] == 0  # AR writes left to right
    a = nums["iia"]["AR twin (greedy)"]
    if "hypotheses" in a:  # the token at position 2 is read after h2 is written: it cannot move it
        assert a["hypotheses"]["h1@canvas:all/next"]["correct_informative"] == 0
    assert "## What this run shows" in rep.markdown


@pytest.mark.slow
def test_report_rerenders_from_json(quick_study, check_rerender):
    _zoo("hop_chain-diffusion"), _zoo("hop_chain-ar")
    check_rerender("hop_chain", quick_study("hop_chain")[1])
