"""The compose_odd study: its layout and causal model on hand-checked answers, the list-shift measure on
constructed canvases with known answers (pure Python), and a quick end-to-end run on the zoo compose_odd models."""

from __future__ import annotations

import json

import pytest
import torch

from case_studies.compose_odd import COMPOSE_ODD_MODEL, LIST_START, list_offset, list_shift, odd_list
from dgt_interp.tasks import COMPOSE_ODD, Problem

BASE = Problem("+#+++##+>?3=", "6554320216:5531")
SRC = Problem("++++++++++0=", "0987654321:97531")  # c6 = 4


def _zoo(name):
    from dgt_interp import zoo
    from dgt_interp.models import load_model

    if name not in zoo.names():
        pytest.skip(f"zoo model {name} not shipped yet")
    return load_model(name)


def test_layout_and_causal_model():
    assert odd_list("6554320216") == "5531" and LIST_START == 11
    # the list's 1 (state 8) lands after the odd states 5, 5, 3 to its left
    assert list_offset("6554320216", 8) == 14 and BASE.answer[14] == "1"
    assert COMPOSE_ODD_MODEL.run(BASE)["answer"] == BASE.answer
    # c6 := 4 (the source's): the states become 2143214216 (as in the compose study), odd ones 1, 3, 1, 1
    assert COMPOSE_ODD_MODEL.counterfactual(BASE, SRC, ["c6"]) == "2143214216:1311"
    for p in COMPOSE_ODD.problems("test", 50, seed=2):
        assert COMPOSE_ODD_MODEL.run(p)["answer"] == p.answer


def test_list_shift_finds_a_moved_list_and_ignores_tokens_really_there():
    region = list(range(9, 15))
    base = torch.tensor([0] * 9 + [5, 7, 9, 1, 0, 0])
    assert list_shift(base, base, region) == 0
    assert list_shift(torch.tensor([0] * 9 + [3, 5, 7, 9, 1, 0]), base, region) == 1  # one state entered the count
    assert list_shift(torch.tensor([0] * 9 + [7, 9, 1, 0, 0, 0]), base, region) == -1  # one left it
    assert list_shift(torch.tensor([0] * 9 + [5, 7, 9, 3, 0, 0]), base, region) == 0  # one digit changed in place
    # "1 1 1": a shifted copy matches only where the base repeats itself, which is no evidence of a shift
    same = torch.tensor([0] * 9 + [1, 1, 1, 1, 0, 0])
    assert list_shift(torch.tensor([0] * 9 + [0, 1, 1, 1, 1, 0]), same, region) == 1
    assert list_shift(same, same, region) == 0


@pytest.mark.slow
def test_quick_run_writes_a_report(quick_study):
    _zoo("compose_odd-diffusion"), _zoo("compose_odd-ar")
    rep, out = quick_study("compose_odd")
    nums = json.loads((out / "report.json").read_text())
    assert set(nums) >= {"phenomena", "causal", "iia", "seconds"} and (out / "report.md").is_file()
    ar = nums["phenomena"]["AR twin (greedy)"]["argmax"]
    assert ar["rows_smeared"] == 0  # the AR twin writes each token in place, once
    assert "## What this run shows" in rep.markdown


@pytest.mark.slow
def test_report_rerenders_from_json(quick_study, check_rerender):
    _zoo("compose_odd-diffusion"), _zoo("compose_odd-ar")
    check_rerender("compose_odd", quick_study("compose_odd")[1])
