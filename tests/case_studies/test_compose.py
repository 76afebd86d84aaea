"""The compose study: its causal model on hand-checked answers, its sites and pairs, the shared chain helpers
on constructed flips with known answers (pure Python), and a quick end-to-end run on the zoo compose models."""

from __future__ import annotations

import json

import pytest
import torch

from case_studies.chain_common import corrected_drafts, neighbour_rates, random_order, right_to_left
from case_studies.compose.hypothesis import COMPOSE_MODEL, compose_pairs, link_at
from dgt_interp.causal import CaseStudyError, SiteContext
from dgt_interp.phenomena import CanvasFlips
from dgt_interp.tasks import COMPOSE, Problem

# '+' adds one mod 10; '#' is x -> (2, 7, 0, 9, 1, 5, 3, 8, 6, 4)[x], '>' (5, 3, 8, 0, 6, 9, 1, 4, 2, 7)[x],
# '?' (9, 0, 4, 6, 3, 1, 7, 2, 5, 8)[x]. From s = 3, right to left: ? 6, > 1, + 2, # 0, # 2, + 3, + 4, + 5, # 5, + 6
BASE = Problem("+#+++##+>?3=", "6554320216")
SRC = Problem("++++++++++0=", "0987654321")  # c6 = 4


def _zoo(name):
    from dgt_interp import zoo
    from dgt_interp.models import load_model

    if name not in zoo.names():
        pytest.skip(f"zoo model {name} not shipped yet")
    return load_model(name)


def test_compose_model_maps_the_source_draft():
    assert COMPOSE_MODEL.run(BASE)["answer"] == BASE.answer and COMPOSE_MODEL.run(SRC)["answer"] == SRC.answer
    # c6 := 4 (the source's); the base's maps o5..o0 = # + + + # + then give, right to left:
    # c5 = #(4) = 1, c4 = 2, c3 = 3, c2 = 4, c1 = #(4) = 1, c0 = 2; c7..c9 stay 2 1 6
    assert COMPOSE_MODEL.counterfactual(BASE, SRC, ["c6"]) == "2143214216"
    h = link_at(6, "canvas", "step1", compare="next")
    assert h.output_positions == (5,) and h.matches("6554310216", "2143214216") and not h.matches("2143224216", "2143214216")
    assert link_at(6, "both", "all", compare="chain").output_positions == (0, 1, 2, 3, 4, 5)
    assert link_at(3, "both", "all").name == "c3@both:all/next" and link_at(3).output_positions == (2,)
    for p in COMPOSE.problems("test", 50, seed=3):
        assert COMPOSE_MODEL.run(p)["answer"] == p.answer


def test_sites_and_bad_input():
    d = SiteContext("diffusion", 13, 11, 2, 6)
    assert [(s.name, s.step, s.pos) for s in link_at(6, "canvas", "step1").sites(d)] == [("hook_embed", 1, 6)]
    assert [(s.name, s.step, s.pos) for s in link_at(6, "both", "all", pos=10).sites(d)] == [
        ("hook_embed", None, 10), ("self_cond.hook_logits_in", None, 10)]
    ar = SiteContext("ar", 13, 11, 2, 11)
    assert [(s.name, s.step, s.pos) for s in link_at(6, "canvas").sites(ar)] == [("hook_embed", 7, 0)]  # read after c5
    assert [(s.name, s.step, s.pos) for s in link_at(6, "L0").sites(ar)] == [("blocks.0.hook_resid_post", 0, 12)]
    for bad, match in (((0,), "link must be"), ((10,), "link must be"), ((6, "tokens"), "channel must be one of"),
                       ((6, "canvas", "last"), "steps must be one of"), ((6, "canvas", "all", 11), "pos must be"),
                       ((6, "canvas", "all", None, "all"), "compare must be one of")):
        with pytest.raises(CaseStudyError, match=match):
            link_at(*bad)
    for bad in ("123=", "+#+++##+>?x=", "+#+++#*+>?3="):
        with pytest.raises(CaseStudyError, match="a compose prompt is 10 maps"):
            COMPOSE_MODEL.run(Problem(bad, "0"))


def test_pairs_differ_in_the_link_and_are_held_out():
    pairs = compose_pairs(20, seed=1)
    assert len(pairs) == 20
    for b, s in pairs:
        assert COMPOSE_MODEL.run(b)["c6"] != COMPOSE_MODEL.run(s)["c6"]
        assert COMPOSE.is_test(b.prompt) and COMPOSE.is_test(s.prompt)
        # the maps are bijections: another c6 gives another c5, so every pair is informative for /next
        assert COMPOSE_MODEL.counterfactual(b, s, ["c6"])[5] != b.answer[5]
    with pytest.raises(CaseStudyError, match="at least two different c6"):
        compose_pairs(2, pool=[BASE])


def test_random_order_on_long_rows_samples_orders():
    assert right_to_left([3, 2, 2, 0]) and not right_to_left([1, 1, 1]) and not right_to_left([0, 1, 1])
    steps = torch.tensor([[7.0, 6, 5, 4, 3, 2, 1, 0]] * 4)  # 8 distinct steps: 8! orders, 200 drawn per row
    r = random_order(steps, order=right_to_left, seed=0)
    # one order in 8! is right to left; the mean rho over random orders is 0 (sd of one order's rho ~ 0.38,
    # of a mean over 800 draws ~ 0.013: 0.1 is > 7 sd)
    assert r["fraction_right_to_left"] < 0.01 and abs(r["mean_rho"]) < 0.1
    assert random_order(steps, order=right_to_left, seed=0) == r  # seeded


def _flips(step_flips, flips, patched, positions):
    k, q, b, length = step_flips.shape
    return CanvasFlips(flips=flips, patched=patched, base_final=torch.zeros(b, length, dtype=torch.long),
                       mask=torch.ones(b, length, dtype=torch.bool), steps=list(range(k)), positions=positions,
                       channels=("canvas",), step_flips=step_flips)


def test_neighbour_rates_and_corrected_drafts_on_constructed_flips():
    # 1 step, q in (1, 2), 2 rows, 4 positions. Patching q flips q-1 in the patched step in both rows; the final
    # token at q-1 stays flipped in row 0 only (row 1 corrected it); patching q = 2 in row 1 changed nothing.
    step = torch.zeros(1, 2, 2, 4, dtype=torch.bool)
    final = torch.zeros_like(step)
    patched = torch.ones(1, 2, 2, dtype=torch.bool)
    for qi, q in enumerate((1, 2)):
        step[0, qi, :, q - 1] = True
        final[0, qi, 0, q - 1] = True
    patched[0, 1, 1] = False
    step[0, 1, 1] = False
    f = _flips(step, final, patched, [1, 2])
    s = neighbour_rates(f, 0, at="step")
    # events for p = q - 1: (q=1, rows 0 and 1), (q=2, row 0) -> 3/3; p = q + 1: same events, no flips
    assert s["left neighbour (q-1)"]["hits"] == 3 and s["left neighbour (q-1)"]["events"] == 3
    assert s["right neighbour (q+1)"]["rate"] == 0.0 and s["random sites (|p-q| >= 2)"]["hits"] == 0
    fin = neighbour_rates(f, 0, at="final")
    assert fin["left neighbour (q-1)"]["hits"] == 2  # row 0 for q = 1 and q = 2
    c = corrected_drafts(f, offset=1)
    assert (c["k"], c["n"]) == (1, 3)  # of 3 induced wrong drafts, row 1's (q = 1) was corrected
    assert neighbour_rates(f, 0, at="step", positions=[3])["left neighbour (q-1)"]["events"] == 0


@pytest.mark.slow
def test_quick_run_writes_a_report(quick_study):
    _zoo("compose-diffusion"), _zoo("compose-ar")
    rep, out = quick_study("compose")
    nums = json.loads((out / "report.json").read_text())
    assert set(nums) >= {"records", "causal", "iia", "step_effect", "seconds"} and (out / "report.md").is_file()
    ar = nums["records"]["AR twin (greedy)"]
    assert ar["commit"]["mean_rho"] in (1.0, None) and ar["right_to_left"]["k"] == 0  # AR writes left to right
    a = nums["iia"]["AR twin (greedy)"]
    if "hypotheses" in a:  # the token at position 6 is read after c5 is written: it cannot move it
        assert a["hypotheses"]["c6@canvas:all/next"]["correct_informative"] == 0
    assert "## What this run shows" in rep.markdown


@pytest.mark.slow
def test_report_rerenders_from_json(quick_study, check_rerender):
    _zoo("compose-diffusion"), _zoo("compose-ar")
    check_rerender("compose", quick_study("compose")[1])


def test_order_effects_on_constructed_flips():
    from case_studies.chain_common import order_effects

    # 1 step, every q in 0..3 patched in 4 rows: a patch flips every position left of it, none to its right
    k, b, length = 1, 4, 4
    step = torch.zeros(k, length, b, length, dtype=torch.bool)
    for q in range(length):
        step[0, q, :, :q] = True
    f = _flips(step, step.clone(), torch.ones(k, length, b, dtype=torch.bool), list(range(length)))
    o = order_effects(f, 0, at="step")
    assert o["later_on_earlier"] == 1.0 and o["earlier_on_later"] == 0.0 and o["difference_ci95"] == [1.0, 1.0]
