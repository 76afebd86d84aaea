"""The addition study's hypothesis code (pure Python, known answers) and a quick end-to-end run (slow)."""

from __future__ import annotations

import json

import pytest

from case_studies.addition.hypothesis import ADDITION_MODEL, carry_at, carry_pairs, digits
from dgt_interp.casestudy import SiteContext
from dgt_interp.tasks import Problem


def test_causal_model_is_schoolbook_addition():
    v = ADDITION_MODEL.run(Problem("4604+4513=", "9117"))
    assert v["answer"] == "9117" and [v[f"c{j}"] for j in range(5)] == [0, 0, 0, 1, 0]
    # carry into hundreds set to 1: 6+5+1 = 12 -> digit 2, carry on into thousands stays 1
    assert ADDITION_MODEL.counterfactual(Problem("4604+4513=", ""), Problem("2654+6569=", ""), ["c2"]) == "9217"
    assert ADDITION_MODEL.run(Problem("1+2=", "3"))["answer"] == "3"


def test_carry_pairs_share_the_column_and_differ_in_the_carry():
    for j in (1, 2, 3):
        for base, src in carry_pairs(j, 5, seed=1):
            a, b = (ADDITION_MODEL.run(p) for p in (base, src))
            assert a[f"a{j}"] == b[f"a{j}"] and a[f"b{j}"] == b[f"b{j}"] and a[f"c{j}"] != b[f"c{j}"]
            assert len(base.answer) == len(src.answer) == 4 == len(ADDITION_MODEL.counterfactual(base, src, [f"c{j}"]))
    assert digits(1234) == [4, 3, 2, 1]


def test_alignment_sites():
    d = SiteContext("diffusion", 11, 8, 4, 3)
    (s,) = carry_at(2, 1).sites(d)
    assert (s.name, s.step, s.pos) == ("blocks.1.hook_resid_post", None, 1)
    (s,) = carry_at(3, None).sites(d)
    assert (s.name, s.pos) == ("self_cond.hook_logits_in", 0)
    (s,) = carry_at(3, 2).sites(SiteContext("ar", 11, 8, 4, 6))
    assert (s.step, s.pos) == (0, 10)  # digit 3 is generated first, from the prompt's last position
    (s,) = carry_at(1, 2).sites(SiteContext("ar", 11, 8, 4, 6))
    assert (s.step, s.pos) == (2, 0)
    assert carry_at(2, 1, local=True).output_positions == (1,) and carry_at(2, 1).output_positions is None


@pytest.mark.slow
def test_quick_run_writes_a_report(tmp_path, addition_diffusion, addition_ar):
    from dgt_interp.casestudy import run_study

    rep = run_study("addition", out=tmp_path, quick=True, progress=False)
    nums = json.loads((tmp_path / "report.json").read_text())
    assert set(nums) >= {"phenomena", "causal", "iia", "seconds"}
    assert nums["phenomena"]["AR twin (greedy)"]["commit_argmax"]["mean_rho"] == pytest.approx(1.0)
    assert (tmp_path / "iia.png").is_file() and "## Carry hypotheses" in rep.markdown
