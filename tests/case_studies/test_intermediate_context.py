"""The intermediate-context study: its hypothesis on known answers (pure Python), the random-site
baseline on the self-conditioning channel, and a quick end-to-end run on the zoo count models."""

from __future__ import annotations

import json
import random

import pytest

from case_studies.count_common import COUNT_MODEL
from case_studies.intermediate_context.hypothesis import context_pairs, count_draft_at, list_at
from dgt_interp.causal import CaseStudyError, SiteContext
from dgt_interp.tasks import Problem

BASE, SRC = Problem("7291538[3-7]?", "3:753"), Problem("4450[4-5]?", "3:445")


def _zoo(name):
    from dgt_interp import zoo
    from dgt_interp.models import load_model

    if name not in zoo.names():
        pytest.skip(f"zoo model {name} not shipped yet")
    return load_model(name)


def test_count_follows_the_list():
    short = Problem("19[1-1]?", "1:1")
    assert COUNT_MODEL.counterfactual(BASE, short, ["list"]) == "1:1"  # count := len(list)
    assert COUNT_MODEL.counterfactual(BASE, SRC, ["list"]) == "3:445"
    h = list_at("both", "all", "count")
    assert h.variables == ("list",) and h.compare == "count" and h.model is COUNT_MODEL
    assert h.matches("1:999", "1:1") and not h.matches("3:1", "1:1")


def test_membership_counterfactual():
    # the source's membership vector applied to the base digits: m = (T, F, T) picks 7 and 9
    src = Problem("515[5-5]?", "2:55")
    assert COUNT_MODEL.counterfactual(Problem("729[3-7]?", "1:7"), src, ["m"]) == "2:79"


def test_sites():
    d = SiteContext("diffusion", 15, 11, 4, 6)
    sites = list_at("both", "all").sites(d)
    assert len(sites) == 18 and {s.pos for s in sites} == set(range(2, 11)) and {s.step for s in sites} == {None}
    assert {s.name for s in sites} == {"hook_embed", "self_cond.hook_logits_in"}
    assert {s.step for s in list_at("canvas", "step1").sites(d)} == {1}
    assert [s.pos for s in count_draft_at("selfcond").sites(d)] == [0]
    ar = list_at("both", "all").sites(SiteContext("ar", 15, 11, 4, 7))
    assert [(s.name, s.step, s.pos) for s in ar] == [("hook_embed", k, 0) for k in (3, 4, 5, 6)]  # after the count
    with pytest.raises(CaseStudyError, match="channel must be one of"):
        list_at("tokens")
    with pytest.raises(CaseStudyError, match="steps must be one of"):
        list_at("both", "last")
    for b, s in context_pairs(10, seed=2):
        assert COUNT_MODEL.run(b)["n"] != COUNT_MODEL.run(s)["n"]


def test_random_sites_on_the_self_conditioning_channel(addition_diffusion):
    """Self-conditioning fires from step 1 on: random positions for it must range over the canvas,
    not collapse to position 0 (step 0, where it does not fire, has no positions)."""
    from case_studies.addition.hypothesis import carry_pairs
    from dgt_interp.causal import PairRuns, random_sites
    from dgt_interp.patching import Site

    runs = PairRuns(addition_diffusion, carry_pairs(2, 2), seed=0, filter_correct=False)
    like = [Site("self_cond.hook_logits_in", None, p) for p in range(8)]
    pos = [s.pos for _ in range(3) for s in random_sites(runs, like, random.Random(0))]
    assert len(set(pos)) > 1 and all(0 <= p < 8 for p in pos)


@pytest.mark.slow
def test_quick_run_writes_a_report(quick_study):
    _zoo("count-diffusion"), _zoo("count-ar")
    rep, tmp_path = quick_study("intermediate_context")  # run_study(..., quick=True), shared with the rerender test
    nums = json.loads((tmp_path / "report.json").read_text())
    assert set(nums) >= {"records", "causal", "iia", "seconds"} and (tmp_path / "report.md").is_file()
    ar = nums["records"]["AR twin (greedy)"]
    assert ar["count_trace"]["rows_with_a_wrong_count_draft"] == 0 and ar["drafts"]["n_drafts"] == 0  # AR never rewrites
    a = nums["iia"]["AR twin (greedy)"]
    if "hypotheses" in a:  # the list is written after the count: it cannot move it
        assert a["hypotheses"]["list@both:all/count"]["correct_informative"] == 0
    for r in nums["records"].values():
        assert 0.0 <= r["accuracy"] <= r["count_accuracy"] <= 1.0
    assert "## What this run shows" in rep.markdown and (tmp_path / "iia.png").is_file()


@pytest.mark.slow
def test_report_rerenders_from_json(quick_study, check_rerender):
    _zoo("count-diffusion"), _zoo("count-ar")
    check_rerender("intermediate_context", quick_study("intermediate_context")[1])
