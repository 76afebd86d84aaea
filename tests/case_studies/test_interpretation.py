"""Each report carries its own interpretation ("What this run shows"), written from its numbers: claims are
conditioned on their 95% intervals ("inconclusive at this n" when the interval includes the null), a quick
run says its claims are indications only, and every mean correlation is printed with its bootstrap interval.
Rendered from the published report.json files (no model runs), edited where a case needs other numbers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from case_studies.common_report import interval, qualify, side, verdict
from dgt_interp.studies import get_study

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
STUDIES = ("addition", "intermediate_context", "monitorability", "smearing", "sort", "sudoku")


def _numbers(name: str) -> dict:
    return json.loads((DOCS_IMG / f"study_{name}" / "report.json").read_text())


def test_verdict_is_conditioned_on_the_interval():
    assert side([0.1, 0.4], 0.0) == "above" and side([-0.4, -0.1], 0.0) == "below"
    assert side([-0.1, 0.4], 0.0) == side(None, 0.0) == side([None, None], 0.0) == "spans"
    kw = dict(above="up", below="down", n=14, what="puzzles")
    assert verdict([0.1, 0.4], 0.0, **kw) == "up" and verdict([-0.4, -0.1], 0.0, **kw) == "down"
    assert verdict([-0.1, 0.4], 0.0, **kw) == "inconclusive at this n (puzzles = 14: the 95% interval includes 0)"
    assert interval(0.5, [0.25, None]) == "0.50 [0.25, n/a]"
    assert qualify({"quick": True}, 4, "x") == "indication only (quick run, n = 4): x"
    assert qualify({}, 24, "x") == "at n = 24: x"


@pytest.mark.parametrize("name", STUDIES)
def test_every_report_interprets_itself_and_a_quick_run_says_so(name):
    study, numbers = get_study(name), _numbers(name)
    full = study.render(numbers)
    assert "## What this run shows" in full and "Quick run:" not in full
    quick = study.render({**numbers, "quick": True})
    assert "*Quick run: the n below are smoke-test sizes" in quick


def test_sort_rank_verdict_names_its_n_and_is_an_indication_in_a_quick_run():
    """The sort quick run once stated "DiffusionGemma behaves as the rank model" on n = 4 as a result."""
    study, numbers = get_study("sort"), _numbers("sort")
    assert "At n = 24 pairs: DiffusionGemma behaves as the rank model" in study.render(numbers)
    quick = study.render({**numbers, "quick": True})
    assert "Indication only (quick run, n = 24 pairs): DiffusionGemma behaves as the rank model" in quick
    wide = copy.deepcopy(numbers)  # a small-n run whose intervals overlap: no verdict at all
    pt = wide["summary"]["previous_token"]["default (eb=0.1)"]
    pt["rank_digit"].update(iia=0.75, ci95=[0.30, 0.95], correct=3, n=4)
    pt["successor_digit"].update(iia=0.25, ci95=[0.05, 0.70], correct=1, n=4)
    text = study.render(wide)
    assert "behaves as the rank model" not in text and "At n = 24 pairs: the AR twin reads the digit" in text
    wide["summary"]["previous_token"]["AR twin"]["successor_digit"].update(iia=0.5, ci95=[0.15, 0.85], correct=2, n=4)
    assert "Neither model is separated" in study.render(wide)


def test_sudoku_claims_follow_the_intervals():
    study, numbers = get_study("sudoku"), _numbers("sudoku")
    tight, wide = copy.deepcopy(numbers), copy.deepcopy(numbers)
    for o in tight["order"].values():
        o.update(ci95_rho_round=[0.3, 0.7], ci95_rho_position=[-0.3, 0.1], ci95_concordance=[0.58, 0.70])
    tight["order"]["AR twin (greedy)"]["ci95_concordance"] = [0.38, 0.49]
    text = study.render(tight)
    assert "cells commit roughly in constraint-propagation order" in text
    assert "0.52 [0.30, 0.70] over the 14 puzzles" in text
    assert "more often than position order alone gives" in text
    assert "| 0.520 [0.300, 0.700] (14) |" in text  # the table prints the interval of every mean correlation
    assert "at n = 14 puzzles with an order: cells commit roughly" in text
    assert ("indication only (quick run, n = 14 puzzles with an order): cells commit roughly"
            in study.render({**tight, "quick": True}))
    for o in wide["order"].values():
        o.update(ci95_rho_round=[-0.1, 0.9], ci95_concordance=[0.45, 0.8])
    text = study.render(wide)
    assert "constraint-propagation order" not in text.split("## What this run shows")[1].split("\n- **Under")[0]
    assert "inconclusive at this n (puzzles with an order = 14" in text
    assert "inconclusive at this n (the interval includes 0.5)" in text


def test_addition_and_sort_print_the_interval_of_every_mean_rho():
    for name, setting in (("addition", "eb=1e-4"), ("sort", "eb=1e-4")):
        numbers = copy.deepcopy(_numbers(name))
        numbers["phenomena"][setting]["commit_sampler"]["ci95_rho"] = [-0.31, -0.02]
        text = get_study(name).render(numbers)
        assert "[-0.31, -0.02]" in text and "right to left" in text


def test_commit_order_reports_a_bootstrap_interval_of_its_mean_rho():
    from dgt_interp.phenomena.commit import CommitOrder
    from dgt_interp.stats import bootstrap_interval

    rho = torch.tensor([0.5, float("nan"), 0.1, 0.9, -0.2])
    d = CommitOrder(torch.zeros(5, 3), torch.ones(5), rho, "argmax", "diffusion").to_dict()
    ref = bootstrap_interval([0.5, 0.1, 0.9, -0.2], lambda x: sum(x) / len(x), seed=0)  # the float64 reference
    assert d["ci95_rho"] == pytest.approx(list(ref), abs=1e-6)
    lo, hi = d["ci95_rho"]
    assert -0.2 <= lo <= d["mean_rho"] <= hi <= 0.9
    same = CommitOrder(torch.zeros(3, 3), torch.ones(3), torch.tensor([0.4, 0.4, 0.4]), "argmax", "diffusion")
    assert same.to_dict()["ci95_rho"] == pytest.approx([0.4, 0.4])     # no spread: a point
    one = CommitOrder(torch.zeros(2, 3), torch.ones(2), torch.tensor([0.4, float("nan")]), "argmax", "diffusion")
    assert all(x != x for x in one.to_dict()["ci95_rho"])              # one row: no interval


def test_sudoku_concordance_interval_resamples_puzzles():
    from case_studies.sudoku import order_vs_rounds, propagation_rounds
    from dgt_interp.tasks import Problem

    p = Problem("34###13#421#1###?", "3421213442131342")
    rounds = torch.tensor([float(r) for r in propagation_rounds(p.prompt)])
    o = order_vs_rounds(torch.stack([rounds, 2 - rounds]), [p, p])  # one puzzle in order (1.0), one reversed (0.0)
    assert o["concordance"] == 0.5 and o["ci95_concordance"][0] == 0.0 and o["ci95_concordance"][1] == 1.0
    same = order_vs_rounds(torch.stack([rounds, rounds]), [p, p])
    assert same["ci95_concordance"] == [1.0, 1.0]


def test_transparency_table_is_current_and_reads_only_intermediate_held_out_results():
    from case_studies.transparency import BEGIN, END, iia_results, is_intermediate, table

    page = (DOCS_IMG.parent / "case_studies.md").read_text()
    assert page.split(BEGIN)[1].split(END)[0].strip() == table(DOCS_IMG.parent).strip(), \
        "regenerate: python -m case_studies.transparency docs"
    assert is_intermediate(["blocks.2.hook_resid_post@step=None,pos=0"], 4)
    assert not is_intermediate(["blocks.3.hook_resid_post@step=None,pos=0"], 4)  # the last layer
    assert is_intermediate(["self_cond.hook_logits_in@step=1,pos=2"], 4)
    assert not is_intermediate(["hook_embed@step=None,pos=2"], 4) and not is_intermediate([], 4)
    r = {"name": "h", "kind": "diffusion", "sites": ["blocks.0.x"], "n": 4, "correct": 2, "iia_informative": 0.5,
         "ci95_informative": [0.1, 0.9], "n_informative": 4}
    numbers = {"a": {"selection_digit": [dict(r, name="sel")], "held_out": [r, dict(r)]},
               "b": {"draws": [dict(r, name="random #0")], "mean_iia_informative": 0.1}}
    assert [x["name"] for x in iia_results(numbers)] == ["h"]  # no selection half, no baseline draw, no duplicate
