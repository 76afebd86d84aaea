"""The patching figure: exported, one row per step, colour scale from the data, a legend for no-data cells,
values printed where they fit; the checks read the figure's own artists."""

from __future__ import annotations

import pytest
import torch

from dgt_interp.patching import PatchingError
from dgt_interp.viz import step_layer_pos_figure


def _images(fig):
    return [ax.images[0] for ax in fig.axes if ax.images]


def test_one_row_per_step_with_data_scale_legend_and_values():
    g = torch.zeros(16, 4, 8)
    g[3, 1, 2] = 0.12                       # a 12% effect: the colour scale must reach it, not +-1
    g[5, 0, 0] = -0.07
    g[0, :, 3] = float("nan")               # hook absent at step 0, position 3
    fig = step_layer_pos_figure(g, title="t", position_labels=[f"c{i}" for i in range(8)])
    images = _images(fig)
    assert len(images) == 16                                   # one panel per step
    xs = [im.axes.get_position().x0 for im in images]
    ys = [im.axes.get_position().y0 for im in images]
    assert max(xs) - min(xs) < 1e-6 and ys == sorted(ys, reverse=True)   # stacked: one row per step, step 0 on top
    assert images[0].get_clim() == pytest.approx((-0.12, 0.12))
    assert [t.get_text() for t in images[0].axes.get_xticklabels()] == [f"c{i}" for i in range(8)]
    assert images[3].axes.get_title(loc="left") == "step 3"
    legend_texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any("no data" in t for t in legend_texts)
    assert "0.12" in [t.get_text() for t in images[3].axes.texts]
    assert len(images[0].axes.texts) == 4 * 7                  # NaN cells carry no number
    width, height = fig.get_size_inches() * fig.dpi
    assert width < 1000 and height / 16 >= 100                 # each step's panel keeps >= 100 px


def test_no_legend_without_missing_cells_and_fixed_scale():
    fig = step_layer_pos_figure(torch.full((3, 8), 0.5), vmax=1.0)          # [step, pos]: one panel
    images = _images(fig)
    assert len(images) == 1 and images[0].get_clim() == (-1.0, 1.0) and not fig.legends
    assert fig.axes[0].get_ylabel() == "step"


def test_per_prompt_grid_is_refused():
    with pytest.raises(PatchingError, match=r"grid.mean\(-1\)"):
        step_layer_pos_figure(torch.zeros(2, 4, 8, 3))
