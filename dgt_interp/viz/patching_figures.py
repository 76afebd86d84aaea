"""Figures for patching sweeps: one layer × position heatmap per denoising step, one row per step.

`step_layer_pos_figure(grid, title=...)` takes a `[step, layer, pos]` tensor (e.g. the normalised
output of `get_act_patch_resid_pre`, or `attribution_patch`'s) or a `[step, pos]` one
(self-conditioning / canvas sweeps: one panel, steps as rows) and returns a matplotlib `Figure`
built without pyplot:

- one panel per step, stacked (one row per step), each sized to its cells (about 0.5 in per
  position, 0.3 in per layer), so 16 steps stay readable;
- a symmetric colour scale from the data (`max |finite value|`; `vmax=` fixes it, e.g. 1.0 for
  normalised effects), so 5-15% effects are visible;
- grey cells (the hook is absent at that step: self-conditioning at a canvas's first step, AR
  positions not yet generated) are named in a legend;
- each cell's value printed where the cells are large enough (`annotate=None`: at most 20 positions
  and 16 layers per panel; True / False to force);
- labelled axes (`position_labels=` for the x axis, e.g. `["c0:'8'", ...]`).
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from dgt_interp.patching import PatchingError

NO_DATA = "#cccccc"


def step_layer_pos_figure(grid: torch.Tensor, *, title: str = "", label: str = "normalised patch effect",
                          vmax: float | None = None, annotate: bool | None = None,
                          position_labels: list[str] | None = None, steps: list[int] | None = None) -> Figure:
    """`[step, layer, pos]` (one panel per step, one row each) or `[step, pos]` (one panel, steps as rows).

    `vmax`: colour range `[-vmax, vmax]` (None: from the data). `steps`: the step numbers of the rows
    (default 0..). A per-prompt grid (`[..., batch]`) must be reduced first (`.mean(-1)` or `[..., b]`).
    """
    if not isinstance(grid, torch.Tensor) or grid.dim() not in (2, 3):
        shape = tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
        raise PatchingError(f"expected a [step, layer, pos] or [step, pos] tensor, got {shape}; reduce a per-prompt "
                            "grid first (grid.mean(-1) or grid[..., b])")
    g = grid.detach().float().cpu()
    steps = list(range(g.shape[0])) if steps is None else list(steps)
    if len(steps) != g.shape[0]:
        raise PatchingError(f"{len(steps)} step labels for {g.shape[0]} steps")
    if g.dim() == 2:
        panels, row_label, titles, row_ticks = [g], "step", [None], steps
    else:
        panels, row_label, titles, row_ticks = list(g), "layer", [f"step {s}" for s in steps], None
    n_pos = g.shape[-1]
    if position_labels is not None and len(position_labels) != n_pos:
        raise PatchingError(f"{len(position_labels)} position labels for {n_pos} positions")
    finite = g[torch.isfinite(g)]
    if vmax is None:
        vmax = float(finite.abs().max()) if finite.numel() else 1.0
    vmax = max(vmax, 1e-12)
    rows = panels[0].shape[0]
    if annotate is None:
        annotate = n_pos <= 20 and rows <= 16
    width = max(5.0, 1.6 + 0.5 * n_pos)
    panel_h = 0.55 + 0.3 * rows
    fig = Figure(figsize=(width, 0.7 + panel_h * len(panels)), dpi=100, layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    image = None
    cmap = colormaps["RdBu"].with_extremes(bad=NO_DATA)
    for ax, panel, name in zip(axes, panels, titles):
        data = np.ma.masked_invalid(panel.numpy())
        image = ax.imshow(data, cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(panel.shape[0]), row_ticks if row_ticks is not None else range(panel.shape[0]))
        ax.set_ylabel(row_label)
        ax.set_xticks(range(n_pos), position_labels if position_labels is not None else range(n_pos),
                      rotation=90 if position_labels is not None else 0, fontsize=8)
        if name:
            ax.set_title(name, fontsize=9, loc="left")
        if annotate:
            for (r, c), v in np.ndenumerate(panel.numpy()):
                if np.isfinite(v):
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(v) > 0.6 * vmax else "black")
    for ax in axes[:-1]:
        ax.set_xlabel("")
    axes[-1].set_xlabel("canvas position")
    fig.colorbar(image, ax=list(axes), label=label, shrink=min(1.0, 6.0 / max(len(panels), 1)) if len(panels) > 6
                 else 0.9)
    if not bool(torch.isfinite(g).all()):
        fig.legend(handles=[Patch(facecolor=NO_DATA, edgecolor="none", label="no data (hook absent at that step)")],
                   loc="outside lower right", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


__all__ = ["step_layer_pos_figure", "NO_DATA"]
