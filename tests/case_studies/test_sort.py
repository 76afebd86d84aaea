"""The sort study: its two causal models against `sorted` and hand-worked counterfactuals, the pair
samplers and alignments, the position-kind probe on a constructed trajectory, last-layer IIA on the
zoo models (1 by construction), and a quick end-to-end run through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from case_studies.sort.hypothesis import (
    RANK_MODEL,
    SUCCESSOR_MODEL,
    order_pairs,
    order_stat_at,
    previous_token_at,
    previous_token_pairs,
    successor,
)
from dgt_interp.causal import CaseStudyError, SiteContext
from dgt_interp.tasks import EOS_ID, SORT, VOCAB, Problem


def test_both_models_sort():
    for p in SORT.problems("test", 300, seed=0):
        reference = "".join(sorted(p.prompt.rstrip(">")))
        assert RANK_MODEL.run(p)["answer"] == SUCCESSOR_MODEL.run(p)["answer"] == reference


def test_rank_model_counterfactuals_by_hand():
    base = Problem("3142>", "1234")
    assert RANK_MODEL.run(base)["C2"] == 2 and RANK_MODEL.run(Problem("0550>", ""))["c5"] == 2
    # digit 1 from 9876 (6789 -> 7): only that digit changes, the answer need not stay sorted
    assert RANK_MODEL.counterfactual(base, Problem("9876>", ""), ["o1"]) == "1734"
    # C2 := 1 (from 1334): the run of 3s starts one position earlier
    assert RANK_MODEL.counterfactual(base, Problem("3431>", ""), ["C2"]) == "1334"
    # c2 := 0 (from 1343): the 2 disappears, and the answer is one digit shorter
    assert RANK_MODEL.counterfactual(base, Problem("1343>", ""), ["c2"]) == "134"


def test_successor_model_by_hand():
    assert successor((2, 2, 5), [2]) == 2 and successor((2, 2, 5), [2, 2]) == 5 and successor((2, 2, 5), [2, 2, 5]) is None
    assert successor((1, 3), [2]) == 3  # a token absent from the input: the next digit above it
    # 13579 with the token before digit 2 read as 2 (from 1268): 1 3 | 3 5 7 9
    assert SUCCESSOR_MODEL.counterfactual(Problem("97531>", ""), Problem("1862>", ""), ["p2"]) == "133579"
    # o_1 := 8 in 0123: the chain after 8 has nothing left
    assert SUCCESSOR_MODEL.counterfactual(Problem("3210>", ""), Problem("0899>", ""), ["o1"]) == "08"
    assert RANK_MODEL.counterfactual(Problem("3210>", ""), Problem("0899>", ""), ["o1"]) == "0823"


def test_pairs():
    for i in (0, 2, 4):
        for b, s in order_pairs(i, 20, seed=3):
            assert len(b.answer) == len(s.answer) > i + 1 and b.answer[i] != s.answer[i]
            rank, succ = (m.counterfactual(b, s, [f"o{i}"]) for m in (RANK_MODEL, SUCCESSOR_MODEL))
            assert rank == b.answer[:i] + s.answer[i] + b.answer[i + 1:] and succ[i + 1] != rank[i + 1]
    for b, s in previous_token_pairs(3, 20, seed=1):
        assert b.answer[2] != s.answer[2]
        assert SUCCESSOR_MODEL.counterfactual(b, s, ["p3"]) != b.answer == RANK_MODEL.counterfactual(b, s, [])
    with pytest.raises(CaseStudyError, match="digits 0..5"):
        order_pairs(6, 1)


def test_alignment_sites():
    d = SiteContext("diffusion", 8, 8, 4, 3)
    (s,) = order_stat_at(2, 1).sites(d)
    assert (s.name, s.step, s.pos) == ("blocks.1.hook_resid_post", None, 2)
    (s,) = order_stat_at(2, 3, "later").sites(d)
    assert s.step == slice(1, None)
    assert order_stat_at(2, 0, "first").sites(d)[0].step == 0
    assert order_stat_at(4, "selfcond").sites(d)[0].name == "self_cond.hook_logits_in"
    assert order_stat_at(4, "canvas").sites(d)[0].name == "hook_embed"
    (s,) = order_stat_at(0, 2).sites(SiteContext("ar", 8, 8, 4, 6))
    assert (s.step, s.pos) == (0, 7)  # digit 0 is predicted from the prompt's last position
    assert order_stat_at(3, 2).sites(SiteContext("ar", 8, 8, 4, 6))[0].pos == 0
    (s,) = previous_token_at(3).sites(d)
    assert (s.name, s.step, s.pos) == ("hook_embed", None, 2)
    assert previous_token_at(3).sites(SiteContext("ar", 8, 8, 4, 6))[0].step == 3
    assert order_stat_at(2, 1, compare="next").output_positions == (3,)
    assert previous_token_at(2, RANK_MODEL).variables == ()
    for bad in (lambda: order_stat_at(1, "selfcond", "first"), lambda: order_stat_at(1, 0, "some"),
                lambda: order_stat_at(1, 0, compare="x"), lambda: order_stat_at(1, "selfcond").sites(
                    SiteContext("ar", 8, 8, 4, 6))):
        with pytest.raises(CaseStudyError):
            bad()


def test_position_kinds_and_confidence_on_a_constructed_trajectory():
    from case_studies.sort.study import confidence_structure, position_kinds, rank_classes
    from dgt_interp.phenomena import commit_order
    from dgt_interp.testing import constructed_trajectory

    t = {c: VOCAB.index(c) for c in "1359"}
    final = [t["1"], t["3"], t["3"], t["9"], EOS_ID, 0, 0, 0]  # "1339": unique, run, run, unique, EOS
    arg = torch.tensor([final, final])[:, None, :]  # 2 steps, 1 row
    acc = torch.tensor([[True, False, False, True, True, False, False, False], [True] * 8])[:, None, :]
    traj = constructed_trajectory(arg, accepted=acc)
    assert position_kinds(arg[-1]).tolist() == [[0, 1, 1, 0, 2, -1, -1, -1]]
    conf = confidence_structure(traj, commit_order(traj, by="sampler", eos_id=EOS_ID))
    # entropy = 0 where accepted at step 0, else 1; sampler commit step 0 where accepted at step 0, else 1
    assert conf["step0_entropy_by_kind"]["unique digit"] == {"n": 2, "mean": 0.0, "median": 0.0}
    assert conf["step0_entropy_by_kind"]["repeated digit"]["mean"] == 1.0
    assert conf["step0_entropy_by_kind"]["EOS"]["n"] == 1
    assert conf["commit_step_by_kind"] == {"unique digit": 0.0, "repeated digit": 1.0, "EOS": 0.0}
    assert conf["step0_entropy_by_position"][:4] == [0.0, 1.0, 1.0, 0.0]
    assert rank_classes(arg[-1]).tolist() == [[0, 1, 1, 2, -1, -1, -1, -1]]
    assert conf["commit_step_by_rank"] == {"smallest digit": 0.0, "interior digit": 1.0, "largest digit": 0.0}
    assert conf["step0_entropy_by_rank"]["interior digit"] == {"n": 2, "mean": 1.0, "median": 1.0}


def test_last_layer_alignment_is_exact_on_both_zoo_models(sort_diffusion, sort_ar):
    """The last block's residual at position i fixes that position's logits, so patching it from the
    source at every step makes the emitted digit i the source's: digit-level IIA 1 by construction."""
    from case_studies.sort.study import pair_runs
    from dgt_interp.causal import interchange_accuracy

    pairs = order_pairs(2, 4, seed=5)
    runs = pair_runs(sort_diffusion, pairs, 0)
    res = interchange_accuracy(sort_diffusion, order_stat_at(2, 3, compare="digit"), runs=runs)
    assert (res.n_informative, res.iia_informative) == (4, 1.0) and res.ci95_informative[0] > 0.5
    ar_runs = pair_runs(sort_ar, pairs, 0, do_sample=False)
    res = interchange_accuracy(sort_ar, order_stat_at(2, 3, compare="digit"), runs=ar_runs)
    assert res.iia_informative == 1.0


@pytest.fixture(scope="module")
def cli_quick_run(tmp_path_factory, sort_diffusion, sort_ar):
    """`case-study run sort --quick` through the CLI, once: (exit status, out dir)."""
    from dgt_interp.cli import main

    out = tmp_path_factory.mktemp("sort_quick")
    return main(["case-study", "run", "sort", "--quick", "--quiet", "--out", str(out)]), out


@pytest.mark.slow
def test_quick_run_through_the_cli(cli_quick_run, capsys):
    from dgt_interp.cli import main

    assert main(["case-study", "list"]) == 0
    assert "sort" in capsys.readouterr().out
    rc, tmp_path = cli_quick_run  # main(["case-study", "run", "sort", "--quick", "--quiet", "--out", dir])
    assert rc == 0
    nums = json.loads((tmp_path / "report.json").read_text())
    assert set(nums) >= {"phenomena", "confidence", "causal", "iia", "previous_token", "summary", "seconds"}
    assert nums["phenomena"]["AR twin (greedy)"]["commit_argmax"]["mean_rho"] == pytest.approx(1.0)
    for name, s in nums["summary"]["iia"].items():
        for a in s["alignments"].values():
            for r in a.values():
                assert 0 <= r["iia"] <= 1 and r["ci95"][0] <= r["iia"] <= r["ci95"][1]
        assert s["alignments"]["L3:all"]["digit"]["iia"] == 1.0  # exact by construction (see above)
    md = (tmp_path / "report.md").read_text()
    assert "## What this run shows" in md and "## Rank or successor" in md
    for fig in ("iia_alignments", "previous_token", "commit_order_many", "confidence_default"):
        assert (tmp_path / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_report_rerenders_from_json(cli_quick_run, check_rerender):
    rc, out = cli_quick_run
    assert rc == 0
    check_rerender("sort", out)
