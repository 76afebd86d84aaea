"""The sudoku study: propagation rounds against a hand-worked puzzle and the task's unique solutions,
the order statistics on hand-made commit steps, and a quick end-to-end run on the zoo model (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from case_studies.sudoku import multi_round_puzzles, order_vs_rounds, propagate, propagation_rounds
from dgt_interp.tasks import SUDOKU, Problem

# 3 4 # #      round 1: cell 2 (column 2 leaves 2), 3 (hidden: 1 fits only there in row 0),
# # 1 3 #      4 (column 0 leaves 2), 7 (hidden: 4 in row 1), 11 (row 2 leaves 3), 13 (column 1 leaves 3),
# 4 2 1 #      14 (hidden: 4 in column 2); round 2: cell 15 (row 3 is 1 3 4 _ only after round 1)
# 1 # # #
PUZZLE = Problem("34###13#421#1###?", "3421213442131342")


def test_propagation_rounds_by_hand():
    assert propagation_rounds(PUZZLE.prompt) == [0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 2]
    assert propagate(PUZZLE.prompt) == PUZZLE.answer


def test_propagation_solves_the_task_and_multi_round_puzzles_need_two_rounds():
    for p in SUDOKU.problems("test", 150, seed=0):  # singles suffice for every 4-10 blank puzzle drawn
        assert propagate(p.prompt) == p.answer
    picked = multi_round_puzzles(5, seed=1)
    assert len(picked) == 5 and all(SUDOKU.is_test(p.prompt) for p in picked)
    assert all(max(r for r in propagation_rounds(p.prompt) if r is not None) >= 2 for p in picked)


def test_order_vs_rounds_on_hand_made_commit_steps():
    rounds = torch.tensor([float(r) for r in propagation_rounds(PUZZLE.prompt)])
    in_order = rounds.clone()[None]  # commit step = round: the propagation order exactly
    o = order_vs_rounds(in_order, [PUZZLE])
    assert o["mean_rho_round"] == pytest.approx(1.0) and o["concordance"] == 1.0 and o["pairs"] == 7
    assert o["mean_commit_step_by_round"] == {0: 0.0, 1: 1.0, 2: 2.0} and o["cells_by_round"] == {0: 8, 1: 7, 2: 1}
    reverse = (2 - rounds)[None]
    assert order_vs_rounds(reverse, [PUZZLE])["concordance"] == 0.0
    flat = torch.zeros(1, 17)
    flat_o = order_vs_rounds(flat, [PUZZLE])
    assert flat_o["concordance"] == 0.5 and flat_o["rows_with_rho_round"] == 0


@pytest.mark.slow
def test_quick_run_writes_a_report(quick_study):
    _skip_without_zoo()
    rep, tmp_path = quick_study("sudoku")  # run_study("sudoku", quick=True), shared with the rerender test
    nums = json.loads((tmp_path / "report.json").read_text())
    assert set(nums) >= {"phenomena", "order", "causal"}
    assert (tmp_path / "commit_step_by_round.png").is_file() and "## Commit order against propagation order" in rep.markdown


@pytest.mark.slow
def test_report_rerenders_from_json(quick_study, check_rerender):
    _skip_without_zoo()
    check_rerender("sudoku", quick_study("sudoku")[1])


def _skip_without_zoo():
    from dgt_interp import zoo

    if "sudoku-diffusion" not in zoo.names():
        pytest.skip("zoo model sudoku-diffusion not shipped")


def test_mean_correlations_carry_a_bootstrap_interval():
    """The interval brackets the mean, is a point for identical puzzles, and is rendered beside the mean."""
    from case_studies.sudoku.report import _ci

    rounds = torch.tensor([float(r) for r in propagation_rounds(PUZZLE.prompt)])
    noisy = torch.stack([rounds, rounds.flip(0), rounds, torch.arange(float(len(rounds)))])
    o = order_vs_rounds(noisy, [PUZZLE] * 4)
    lo, hi = o["ci95_rho_round"]
    assert lo <= o["mean_rho_round"] <= hi and lo < hi
    same = order_vs_rounds(rounds.repeat(3, 1), [PUZZLE] * 3)
    assert same["ci95_rho_round"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert _ci(o, "ci95_rho_round") == f" [{lo:.3f}, {hi:.3f}]" and _ci({}, "ci95_rho_round") == ""
