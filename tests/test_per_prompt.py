"""Per-prompt results: sweeps and attribution keep a trailing batch axis whose mean is the usual result, and
each prompt's column equals the same experiment run on that prompt alone (the row layout is right); metrics
take a target per prompt (checked against a hand computation on the recorded logits)."""

from __future__ import annotations

import pytest
import torch

from dgt_interp.attribution import attribution_patch
from dgt_interp.evaluate import prompt_batch
from dgt_interp.patching import AnswerProb, ExactMatch, LogitDiff, Patching, PatchingError, get_act_patch_resid_pre

CLEAN, CORRUPTED = ["12+345=", "45+678="], ["17+345=", "45+178="]
KW = dict(seed=3, max_denoising_steps=2)
# a batch of 2 and a batch of 1 run different matmul shapes: the same numbers to float rounding only
TOL = dict(rtol=0, atol=1e-4)


def _patching(model, rows):
    return Patching(model, prompt_batch([CLEAN[i] for i in rows])["input_ids"],
                    prompt_batch([CORRUPTED[i] for i in rows])["input_ids"], **KW)


@pytest.fixture(scope="module")
def both(tiny_diffusion):
    return _patching(tiny_diffusion, [0, 1]), [_patching(tiny_diffusion, [i]) for i in (0, 1)]


def test_per_prompt_targets_equal_hand_computation(both):
    p, _ = both
    logits, tokens = p.clean.outputs()
    metric = LogitDiff.per_prompt(pos=[0, 2], correct=[5, 7], wrong=[6, 9])
    want = torch.stack([logits[0, [0, 2], 5] - logits[0, [0, 2], 6], logits[1, [0, 2], 7] - logits[1, [0, 2], 9]])
    torch.testing.assert_close(p.clean_metric(metric, per_prompt=True), want.sum(-1).float(), rtol=0, atol=0)
    # the nested-list form and K stacked copies of the batch (row r = prompt r % batch)
    nested = LogitDiff(pos=[0, 2], correct=[[5, 5], [7, 7]], wrong=[[6], [9]])
    torch.testing.assert_close(nested(logits.repeat(3, 1, 1)), want.sum(-1).float().repeat(3), rtol=0, atol=0)
    probs = torch.softmax(logits.float(), -1)
    torch.testing.assert_close(AnswerProb(pos=1, tokens=[[3], [4]])(logits),
                               torch.stack([probs[0, 1, 3], probs[1, 1, 4]]), rtol=1e-6, atol=0)
    assert ExactMatch(pos=0, tokens=tokens[:, :1].tolist())(logits, tokens).tolist() == [1.0, 1.0]
    with pytest.raises(PatchingError, match="per-prompt targets for 3 rows"):
        LogitDiff.per_prompt(0, [1, 2], [3, 4])(logits[:1].repeat(3, 1, 1))


def test_sweep_per_prompt_columns_are_each_prompt_alone(both):
    p, alone = both
    metric = LogitDiff.per_prompt(pos=0, correct=[5, 7], wrong=[6, 9])
    kw = dict(layers=[0, 2], positions=[0, 1, 2])
    grid = get_act_patch_resid_pre(p, metric, per_prompt=True, **kw)          # [step, layer, pos, batch]
    assert grid.shape == (p.n_steps, 2, 3, 2)
    torch.testing.assert_close(grid.mean(-1), get_act_patch_resid_pre(p, metric, **kw), rtol=0, atol=1e-6)
    for b, single in enumerate(alone):
        one = LogitDiff(pos=0, correct=[[[5, 7][b]]], wrong=[[[6, 9][b]]])
        torch.testing.assert_close(grid[..., b], get_act_patch_resid_pre(single, one, **kw), **TOL)


def test_attribution_per_prompt_columns_are_each_prompt_alone(both):
    p, alone = both
    metric = LogitDiff.per_prompt(pos=0, correct=[5, 7], wrong=[6, 9])
    est = attribution_patch(p, metric, per_prompt=True)                       # [step, layer, pos, batch]
    torch.testing.assert_close(est.mean(-1), attribution_patch(p, metric), rtol=0, atol=1e-6)
    for b, single in enumerate(alone):
        one = LogitDiff(pos=0, correct=[[[5, 7][b]]], wrong=[[[6, 9][b]]])
        torch.testing.assert_close(est[..., b], attribution_patch(single, one), **TOL)
    by_layer = attribution_patch(p, metric, by="layer", per_prompt=True)      # [step, layer, batch]
    torch.testing.assert_close(by_layer, est.nansum(2), rtol=0, atol=1e-5)


def test_patching_labels_its_position_axis(both, tiny_ar):
    """`Patching.position_labels`: one label per position of a sweep's axis, the run's own tokens as
    `Trajectory.to_str_tokens` names them (canvas `c{j}` on DiffusionGemma, prompt `p{i}` on the AR twin)."""
    from dgt_interp.tokenizer import load_tokenizer, to_str_tokens

    p, _ = both
    tok = load_tokenizer(p.model)
    grid = get_act_patch_resid_pre(p, LogitDiff(pos=0, correct=5, wrong=6), layers=[0], steps=[0])
    labels = p.position_labels(batch=1)
    n = p.ids["clean"].shape[1]
    assert len(labels) == grid.shape[-1]
    assert labels == [f"c{j}:{t!r}" for j, t in enumerate(to_str_tokens(tok, p.clean.sequences[1, n:]))][:len(labels)]
    assert labels == [x for x in p.clean.to_str_tokens(None, 1, tok) if x.startswith("c")][:len(labels)]
    assert p.position_labels(which="corrupted")[0].startswith("c0:")
    ar = Patching(tiny_ar, prompt_batch(CLEAN)["input_ids"], prompt_batch(CORRUPTED)["input_ids"], seed=0,
                  max_new_tokens=1)
    ar_grid = get_act_patch_resid_pre(ar, LogitDiff(pos=0, correct=5, wrong=6), layers=[0], steps=[0])
    ar_labels = ar.position_labels()
    assert len(ar_labels) == ar_grid.shape[-1] and ar_labels[0].startswith("p0:")
    with pytest.raises(PatchingError, match="which='base'"):
        p.position_labels(which="base")
    with pytest.raises(PatchingError, match="batch=2 is out of range"):
        p.position_labels(batch=2)
