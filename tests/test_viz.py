"""Figures: the plotted values are the lens/trajectory values; commit categories against a hand-made run."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dgt_interp.lens import LensError, LensResult
from dgt_interp.trajectory import Trajectory
from dgt_interp.viz import attention_figure, canvas_figure, commit_grid, commit_heatmap, layer_step_heatmap, token_labeler


def _traj(kind: str = "diffusion") -> Trajectory:
    """A hand-made 3-step run, batch 2, canvas of 3; row 1 finishes after step 0; steps 0-1 canvas 0, step 2 canvas 1."""
    argmax = torch.tensor([[[5, 6, 7], [4, 4, 4]], [[5, 8, 7], [4, 4, 4]], [[5, 8, 9], [4, 4, 4]]])
    accepted = torch.tensor([[[1, 0, 1], [1, 1, 1]], [[0, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 0, 0]]]).bool()
    records = {
        "input_canvas": torch.zeros(3, 2, 3, dtype=torch.long), "sampled_canvas": argmax.clone(),
        "argmax_canvas": argmax, "accepted": accepted,
        "entropy": torch.arange(18, dtype=torch.float).reshape(3, 2, 3) / 10,
        "active": torch.tensor([[True, True], [True, False], [True, False]]),
        "has_self_cond": torch.tensor([[False, False], [True, True], [True, True]]),
        "cur_step": torch.tensor([3, 2, 1]), "canvas": torch.tensor([0, 0, 0]),
    }
    meta = {"kind": kind, "recorded_steps": [], "positions": [0, 1, 2], "canvas_length": 3, "prompt_length": 2}
    return Trajectory(meta=meta, sequences=torch.zeros(2, 5, dtype=torch.long), records=records, activations={}, fired={})


def _result() -> LensResult:
    s, ly, b, p = 2, 3, 1, 2
    target = torch.arange(s * ly * p, dtype=torch.float).reshape(s, ly, b, p, 1) / 20
    valid = torch.tensor([[[True, True]], [[True, False]]])
    return LensResult("logit", [0, 1], [0, 1, 2], [0, 1], [4], top_ids=torch.full((s, ly, b, p, 2), 7),
                      top_probs=torch.full((s, ly, b, p, 2), 0.5), entropy=torch.ones(s, ly, b, p),
                      kl_to_final=torch.arange(s * ly * p, dtype=torch.float).reshape(s, ly, b, p),
                      target_probs=target, valid=valid)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    return buf.getvalue()


def test_commit_grid_matches_hand_computed_categories():
    grid, steps = commit_grid(_traj(), batch=0)
    # 0 argmax not final, 1 argmax final from here on, 2 accepted + changes later, 3 accepted + final
    assert steps == [0, 1, 2]
    assert grid.tolist() == [[3, 0, 2], [1, 3, 0], [1, 1, 3]]
    assert commit_grid(_traj(), batch=1)[0].tolist() == [[3, 3, 3], [-1, -1, -1], [-1, -1, -1]]


def test_commit_grid_per_canvas():
    traj = _traj()
    traj.records["canvas"] = torch.tensor([0, 0, 1])
    grid, steps = commit_grid(traj, canvas=0)
    assert steps == [0, 1] and grid.tolist() == [[3, 0, 3], [1, 3, 1]]  # final = step 1's argmax [5, 8, 7]
    assert commit_grid(traj, canvas=1)[0].tolist() == [[1, 1, 3]]
    with pytest.raises(LensError, match="canvas 2 is out of range"):
        commit_grid(traj, canvas=2)


def test_layer_step_heatmap_plots_the_result_values():
    res = _result()
    fig = layer_step_heatmap(res, position=1)
    assert isinstance(fig, Figure) and _png(fig)[:4] == b"\x89PNG"
    shown = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)  # [layer, step]
    want = res.target_probs[:, :, 0, 1, 0].T.numpy().copy()
    want[:, 1] = np.nan  # step 1, position 1 is not valid
    np.testing.assert_allclose(shown, want)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1"]
    kl = np.ma.filled(layer_step_heatmap(res, metric="kl").axes[0].images[0].get_array(), np.nan)
    np.testing.assert_allclose(kl, res.kl_table().T.numpy())  # mean over valid positions


def test_layer_step_heatmap_errors():
    res = _result()
    for kwargs, needle in [({"position": 1, "metric": "nope"}, "unknown metric"),
                           ({"metric": "target"}, "needs a position"),
                           ({"position": 5}, "position 5"),
                           ({"position": 0, "target": 9}, "target token 9 was not tracked"),
                           ({"position": 0, "batch": 3}, "batch row 3")]:
        with pytest.raises(LensError, match=needle):
            layer_step_heatmap(res, **kwargs)


def test_canvas_figure_shows_entropy_tokens_and_accepted_boxes():
    traj = _traj()
    fig = canvas_figure(traj, batch=0)
    ax = fig.axes[0]
    np.testing.assert_allclose(np.ma.filled(ax.images[0].get_array(), np.nan), traj.records["entropy"][:, 0].numpy())
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(boxes) == int(traj.records["accepted"][:, 0].sum())
    label = token_labeler()
    assert [t.get_text() for t in ax.texts[:3]] == [label(5), label(6), label(7)]
    row1 = np.ma.filled(canvas_figure(traj, batch=1).axes[0].images[0].get_array(), np.nan)
    assert np.isnan(row1[1:]).all()  # finished after step 0
    assert _png(commit_heatmap(traj))[:4] == b"\x89PNG"
    with pytest.raises(LensError, match="unknown canvas record"):
        canvas_figure(traj, show="logits")
    with pytest.raises(LensError, match="batch row 2"):
        commit_heatmap(traj, batch=2)


def test_token_labels_are_short():
    from dgt_interp.tasks import build_tokenizer

    label = token_labeler(build_tokenizer())  # the analysis layer knows no tokenizer: it is passed in
    assert (label(1), label(0), label(3)) == ("$", "_", "0")
    assert len(label(30)) <= 4
    assert token_labeler()(7) == "7"  # no tokenizer: the bare id


def test_attention_figure_plots_the_recorded_pattern_with_token_labels():
    base = _traj()
    torch.manual_seed(0)
    pattern = torch.softmax(torch.randn(3, 2, 2, 3, 5), -1)  # [step, batch, head, canvas 3, keys: 2 cached + 3]
    name = "blocks.1.attn.hook_pattern"
    traj = Trajectory(meta={**base.meta, "recorded_steps": [0, 1, 2]}, sequences=torch.tensor([[2, 7, 5, 8, 7]] * 2),
                      records={**base.records, "input_canvas": torch.tensor([[[5, 6, 7]] * 2] * 3)},
                      activations={name: pattern}, fired={name: [True] * 3})
    fig = attention_figure(traj, 1, 1, batch=1, heads=[1])
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), pattern[1, 1, 1].numpy())
    label = token_labeler()
    assert [t.get_text() for t in ax.get_xticklabels()] == [label(2), label(7), label(5), label(6), label(7)]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"0:{label(5)}", f"1:{label(6)}", f"2:{label(7)}"]
    assert len(attention_figure(traj, 0, 1).axes) == 3  # two heads + colour bar
    with pytest.raises(LensError, match="blocks.0.attn.hook_pattern was not recorded"):
        attention_figure(traj, 0, 0)
    with pytest.raises(LensError, match="out of range: layer 1 has 2 heads"):
        attention_figure(traj, 0, 1, heads=[5])


def _unlabelled(fig: Figure) -> list[str]:
    """Axes of `fig` without an x or y label (colour bars: without a label); [] when every axis is labelled.
    Panels stacked on a shared x axis may leave the x label to the bottom one, and panels side by side the
    y label to the first (`sharex`/`sharey`-style grids): those count as labelled."""
    missing = []
    plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    any_x = any(ax.get_xlabel() for ax in plots)
    any_y = any(ax.get_ylabel() for ax in plots)
    for i, ax in enumerate(fig.axes):
        if ax.get_label() == "<colorbar>":
            if not (ax.get_ylabel() or ax.get_xlabel()):
                missing.append(f"axes {i}: colour bar without a label")
            continue
        if not (ax.get_xlabel() or (any_x and len(plots) > 1)):
            missing.append(f"axes {i} ({ax.get_title()!r}): no x label")
        if not (ax.get_ylabel() or (any_y and len(plots) > 1)):
            missing.append(f"axes {i} ({ax.get_title()!r}): no y label")
    return missing


def test_every_figure_the_toolkit_makes_has_labelled_axes():
    """Issue 14, item 2: labelled axes in every figure (library figures, probe and case-study figures)."""
    from case_studies.addition.study import _attention_figure
    from case_studies.common_report import iia_figure
    from case_studies.sudoku.study import _round_figure
    from dgt_interp.phenomena import commit_order, find_drafts, sequence_smearing, token_smearing
    from dgt_interp.phenomena.flips import CanvasFlips
    from dgt_interp.probing import ProbeResult
    from dgt_interp.viz import step_layer_pos_figure

    traj = _traj()
    nan = torch.full((2, 2), float("nan"))
    iia = {"name": "h", "kind": "diffusion", "iia": 0.5, "iia_informative": 0.5, "ci95_informative": [0.2, 0.8],
           "n": 4, "n_informative": 4}
    att = {k: [[[0.1, 0.2]] * 2] * (4 if k == "own" else 3) for k in ("own", "below", "canvas_below")}
    figures = {
        "commit_order": commit_order(traj).figure(),
        "token_smearing": token_smearing(traj).figure(),
        "sequence_smearing": sequence_smearing(traj).figure(),
        "drafts": find_drafts(traj).figure(),
        "canvas_flips": CanvasFlips(torch.zeros(2, 3, 2, 3, dtype=torch.bool), torch.ones(2, 3, 2, dtype=torch.bool),
                                    torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), [0, 1],
                                    [0, 1, 2], ("token",)).figure(),
        "canvas_figure": canvas_figure(traj),
        "commit_heatmap": commit_heatmap(traj),
        "layer_step_heatmap": layer_step_heatmap(_result(), position=0),
        "step_layer_pos_figure": step_layer_pos_figure(torch.rand(2, 3, 4)),
        "probe": ProbeResult([0, 1], 2, torch.rand(2, 2), torch.rand(2, 2), nan, 0.5, 4, 4, "ridge", "x").figure(),
        "iia_figure": iia_figure([("h", iia)], "t"),
        "sudoku rounds": _round_figure({"s": {"mean_commit_step_by_round": {0: 0.0, 1: 1.0}}}),
        "addition attention": _attention_figure({**att, "uniform": 0.1}),
    }
    bad = {name: m for name, fig in figures.items() if (m := _unlabelled(fig))}
    assert not bad, bad
