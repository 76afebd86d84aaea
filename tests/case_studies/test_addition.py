"""The addition study's hypothesis code (pure Python, known answers) and a quick end-to-end run (slow)."""

from __future__ import annotations

import json

import pytest

from case_studies.addition.hypothesis import (
    ADDITION_MODEL,
    answer_position,
    carry_at,
    carry_pairs,
    column_positions,
    digits,
)
from dgt_interp.causal import SiteContext
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
    below = carry_at(2, 1, local=True, at="below")  # carry into column 2, at digit 1's position (canvas 2)
    (s,) = below.sites(d)
    assert (s.name, s.step, s.pos) == ("blocks.1.hook_resid_post", None, 2) and below.output_positions == (1,)
    with pytest.raises(ValueError, match="no AR alignment"):
        below.sites(SiteContext("ar", 11, 8, 4, 6))
    with pytest.raises(ValueError, match="needs a column j >= 1 and a layer"):
        carry_at(0, 1, at="below")


def test_column_positions_hold_the_column_digits():
    from dgt_interp.evaluate import prompt_batch
    from dgt_interp.tasks import build_tokenizer

    tok = build_tokenizer()
    ids = prompt_batch(["4721+3856="])["input_ids"][0]
    for j, (a, b) in enumerate(zip(digits(4721), digits(3856))):
        assert tok.decode(ids[column_positions(j)]).replace(" ", "") == f"{a}{b}"
    assert [answer_position(j) for j in range(4)] == [3, 2, 1, 0]


def test_column_attention_equals_hf_eager_attentions(addition_diffusion):
    """One problem, one step: the study's column masses are HF's own eager attention weights, summed."""
    import copy

    import torch

    from case_studies.addition.study import column_attention
    from dgt_interp import capture
    from dgt_interp.evaluate import prompt_batch

    problem = Problem("4721+3856=", "8577")
    att = column_attention(addition_diffusion, [problem], seed=0, max_denoising_steps=1)
    ids = prompt_batch([problem.prompt])["input_ids"]
    canvas = capture(addition_diffusion, ids, seed=0, max_denoising_steps=1).input_canvas[0]
    eager = copy.deepcopy(addition_diffusion)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        ref = torch.stack(eager(input_ids=ids, decoder_input_ids=canvas, output_attentions=True).attentions)[:, 0]
    for j in range(4):  # ref: [layer, head, query, key]
        torch.testing.assert_close(torch.tensor(att["own"][j]), ref[:, :, answer_position(j), column_positions(j)].sum(-1),
                                   rtol=0, atol=1e-6)
        if j:
            torch.testing.assert_close(torch.tensor(att["below"][j - 1]),
                                       ref[:, :, answer_position(j), column_positions(j - 1)].sum(-1), rtol=0, atol=1e-6)
            torch.testing.assert_close(torch.tensor(att["canvas_below"][j - 1]),
                                       ref[:, :, answer_position(j), 11 + answer_position(j - 1)], rtol=0, atol=1e-6)
    assert att["uniform"] == pytest.approx(2 / (11 + 8))


@pytest.mark.slow
def test_quick_run_writes_a_report(quick_study, addition_diffusion, addition_ar):
    rep, tmp_path = quick_study("addition")  # run_study("addition", quick=True), shared with the rerender test
    nums = json.loads((tmp_path / "report.json").read_text())
    assert set(nums) >= {"phenomena", "causal", "iia", "seconds"}
    assert nums["phenomena"]["AR twin (greedy)"]["commit_argmax"]["mean_rho"] == pytest.approx(1.0)
    assert (tmp_path / "iia.png").is_file() and "## Carry hypotheses" in rep.markdown
    assert (tmp_path / "column_attention.png").is_file() and "## Where the answer digits read the prompt" in rep.markdown
    # the AR twin is scored at every layer too (its own selection half picks one), so the transparency table
    # can compare both models at intermediate sites
    for entry in nums["iia"][nums["settings"][0]].values():
        ar = entry["ar_twin_layers"]
        assert len(ar["held_out_digit"]) == len(ar["selection_digit"]) == len(entry["held_out_digit"])
        assert {r["kind"] for r in ar["held_out_digit"]} == {"ar"}
        assert ar["selected"] in {r["name"] for r in ar["selection_digit"]}


@pytest.mark.slow
def test_report_rerenders_from_json(quick_study, check_rerender, addition_diffusion, addition_ar):
    check_rerender("addition", quick_study("addition")[1])
