"""Figures for patching sweeps: one layer × position heatmap per denoising step.

`step_layer_pos_figure(grid, title=...)` takes a `[step, layer, pos]` tensor (e.g. the normalised
output of `get_act_patch_resid_pre`) or a `[step, pos]` one (self-conditioning / canvas sweeps,
drawn as one row per step) and returns a matplotlib `Figure` built without pyplot. NaN cells
(hook absent at that step) are grey.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure


def step_layer_pos_figure(grid: torch.Tensor, *, title: str = "", label: str = "normalised patch effect",
                          vmax: float | None = None) -> Figure:
    """`[step, layer, pos]` (one panel per step) or `[step, pos]` (one panel, steps as rows) heatmap."""
    g = grid.detach().float().cpu()
    if g.dim() == 2:
        panels, row_label = [g], "step"
    elif g.dim() == 3:
        panels, row_label = list(g), "layer"
    else:
        raise ValueError(f"expected a [step, layer, pos] or [step, pos] tensor, got shape {tuple(g.shape)}")
    finite = torch.cat([p[torch.isfinite(p)] for p in panels]) if panels else torch.zeros(1)
    vmax = vmax if vmax is not None else max(float(finite.abs().max()) if finite.numel() else 1.0, 1e-6)
    n = len(panels)
    fig = Figure(figsize=(max(5.0, 1.2 + 2.4 * n), 2.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    image = None
    for i, (ax, panel) in enumerate(zip(axes, panels)):
        data = np.ma.masked_invalid(panel.numpy())
        image = ax.imshow(data, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
        image.cmap.set_bad("#cccccc")
        ax.set_xlabel("position")
        ax.set_xticks(range(panel.shape[1]))
        ax.set_yticks(range(panel.shape[0]))
        if i == 0:
            ax.set_ylabel(row_label)
        if g.dim() == 3:
            ax.set_title(f"step {i}", fontsize=9)
    fig.colorbar(image, ax=list(axes), label=label, shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


__all__ = ["step_layer_pos_figure"]
