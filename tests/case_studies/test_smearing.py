"""The smearing study: count-task causal models and measures on known answers (pure Python and
constructed trajectories), known-answer IIA and a quick end-to-end run on the zoo count models."""

from __future__ import annotations

import json

import pytest
import torch

from case_studies.count_common import (
    COUNT_MODEL,
    LEFT_MODEL,
    RIGHT_MODEL,
    CountHypothesis,
    count_pairs,
    count_trace,
    eos_smearing,
    layout,
    parse,
)
from case_studies.smearing.hypothesis import count_at
from dgt_interp.causal import CaseStudyError, SiteContext
from dgt_interp.tasks import COUNT, EOS_ID, Problem, encode
from dgt_interp.testing import constructed_trajectory

BASE = Problem("7291538[3-7]?", "3:753")


def _zoo(name):
    from dgt_interp import zoo
    from dgt_interp.models import load_model

    if name not in zoo.names():
        pytest.skip(f"zoo model {name} not shipped yet")
    return load_model(name)


@pytest.fixture(scope="module")
def count_diffusion():
    return _zoo("count-diffusion")


@pytest.fixture(scope="module")
def count_ar():
    return _zoo("count-ar")


def test_count_model_is_the_task_algorithm():
    assert parse(BASE) == ((7, 2, 9, 1, 5, 3, 8), 3, 7)
    v = COUNT_MODEL.run(BASE)
    assert v["list"] == (7, 5, 3) and v["n"] == 3 and v["answer"] == "3:753"
    for p in COUNT.problems("test", 200, seed=3):  # the task generator is the independent reference
        assert COUNT_MODEL.run(p)["answer"] == p.answer == LEFT_MODEL.run(p)["answer"] == RIGHT_MODEL.run(p)["answer"]
    with pytest.raises(CaseStudyError, match="not a count prompt"):
        parse(Problem("12+3=", ""))


def test_layout_models_disagree_on_where_the_list_lands():
    src2, src5 = Problem("45[4-5]?", "2:45"), Problem("12345[1-5]?", "5:12345")
    assert COUNT_MODEL.counterfactual(BASE, src2, ["n"]) == "2:753"  # the list ignores the count
    assert LEFT_MODEL.counterfactual(BASE, src2, ["n"]) == "2:75"
    assert RIGHT_MODEL.counterfactual(BASE, src2, ["n"]) == "2:53"
    assert LEFT_MODEL.counterfactual(BASE, src5, ["n"]) == "5:753##"
    assert RIGHT_MODEL.counterfactual(BASE, src5, ["n"]) == "5:##753"
    assert layout((1, 2), 0, "left") == ""
    h = CountHypothesis("h", LEFT_MODEL, ("n",), lambda ctx: [])
    assert h.matches("5:75312", "5:753##") and not h.matches("5:7531", "5:753##") and not h.matches("5:7531:", "5:753##")
    assert CountHypothesis("c", LEFT_MODEL, ("n",), lambda c: [], compare="count").matches("5:9", "5:753##")
    assert CountHypothesis("l", LEFT_MODEL, ("n",), lambda c: [], compare="length").matches("5:99999", "5:753##")
    with pytest.raises(CaseStudyError, match="compare must be one of"):
        CountHypothesis("x", LEFT_MODEL, (), lambda c: [], compare="nope")


def test_pairs_and_sites():
    for b, s in count_pairs(20, seed=1):
        nb, ns = COUNT_MODEL.run(b)["n"], COUNT_MODEL.run(s)["n"]
        assert nb != ns and nb >= 1 and ns >= 1
    d, a = SiteContext("diffusion", 15, 11, 4, 6), SiteContext("ar", 15, 11, 4, 9)
    (s,) = count_at(2).sites(d)
    assert (s.name, s.step, s.pos) == ("blocks.2.hook_resid_post", None, 0)
    assert count_at("selfcond").sites(d)[0].name == "self_cond.hook_logits_in"
    assert count_at("canvas").sites(d)[0].name == "hook_embed"
    (s,) = count_at(2).sites(a)
    assert (s.step, s.pos) == (0, 14)  # AR: the prompt's last position predicts the count
    (s,) = count_at("canvas").sites(a)
    assert (s.name, s.step, s.pos) == ("hook_embed", 1, 0)
    assert count_at(1, "right", "length").name == "n@L1[right]/length"
    with pytest.raises(CaseStudyError, match="model must be one of"):
        count_at(1, "middle")


def _canvas(text: str, length: int = 8) -> list[int]:
    ids = encode(text)[1:] + [EOS_ID]
    return ids + [0] * (length - len(ids))


def test_count_trace_and_eos_smearing_on_a_constructed_run():
    # step 0: count 2 and a list that ends one position early; step 1: count 3, list final.
    arg = torch.tensor([[_canvas("2:75")], [_canvas("3:753")], [_canvas("3:753")]])
    traj = constructed_trajectory(arg)
    t = count_trace(traj, [BASE])
    assert t.written[0].tolist() == [2, 3, 3] and t.list_len[0].tolist() == [2, 3, 3]
    s = t.summary()
    assert s["rows_with_a_wrong_count_draft"] == 1 and s["rows_count_corrected"] == 1
    assert s["fraction_steps_count_matches_drafted_list"] == 1.0  # each canvas is self-consistent
    assert s["corrected_with_list_already_final"] == 0 and s["emitted_count_correct"] == 1.0
    e = eos_smearing(traj, source="argmax")
    assert e.offsets == [-2, -1, 0, 1, 2]
    assert e.mass[0].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0] and e.mass[1, 2] == 1.0
    assert e.to_dict()["peak_off_centre"] == 1.0
    e.figure()


@pytest.mark.slow
def test_known_answer_iia(count_diffusion):
    """One-step runs (stop after the first step: always 'stable', and 'confident' below a huge bound):
    the last block's residual at the count position, patched from the source, *is* the count's logits,
    so the emitted count follows the source (IIA 1.0 on 'count') and the list does not move (0.0 on
    'length' under the left model); the canvas token at step 0 is the replayed noise shared by both
    runs, so patching it is a no-op (0.0)."""
    from dgt_interp.causal import PairRuns, interchange_accuracy
    from dgt_interp.patching import Site

    last = count_diffusion.config.get_text_config().num_hidden_layers - 1
    runs = PairRuns(count_diffusion, count_pairs(6, seed=0), seed=0, stability_threshold=0, confidence_threshold=1e9)
    assert runs.ctx.n_steps == 1 and runs.pairs, "one step; the zoo count model should answer some pairs"
    r = interchange_accuracy(count_diffusion, count_at(last, "independent", "count"), runs=runs)
    assert r.iia == 1.0 and r.n_informative == r.n == len(runs.pairs)
    assert interchange_accuracy(count_diffusion, count_at(last, "left", "length"), runs=runs).iia == 0.0
    noop = CountHypothesis("noop", COUNT_MODEL, ("n",), lambda ctx: [Site("hook_embed", 0, 0)], compare="count")
    assert interchange_accuracy(count_diffusion, noop, runs=runs).iia == 0.0


@pytest.mark.slow
def test_quick_run_writes_a_report(quick_study, count_diffusion, count_ar):
    rep, tmp_path = quick_study("smearing")  # run_study("smearing", quick=True), shared with the rerender test
    nums = json.loads((tmp_path / "report.json").read_text())
    assert set(nums) >= {"phenomena", "iia", "seconds"} and (tmp_path / "report.md").is_file()
    ar = nums["phenomena"]["AR twin (greedy)"]
    assert ar["sequence_smearing"]["fraction_steps_smeared"] == 0.0  # AR writes each token once, in place
    for ph in nums["phenomena"].values():
        assert 0.0 <= ph["accuracy"] <= 1.0 and 0.0 <= ph["token_smearing"]["peak"]["mass"] <= 1.0
    for label, r in nums["iia_rows"]:
        v = r.get("iia", r.get("mean_iia"))
        assert v is None or 0.0 <= v <= 1.0, label
    assert "## What this run shows" in rep.markdown and any(f.suffix == ".png" for f in tmp_path.iterdir())


@pytest.mark.slow
def test_report_rerenders_from_json(quick_study, check_rerender, count_diffusion, count_ar):
    check_rerender("smearing", quick_study("smearing")[1])
