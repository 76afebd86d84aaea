"""Figures (matplotlib `Figure`s, built without pyplot: no window, no global backend change)."""

from .attention_figures import attention_figure
from .lens_figures import (COMMIT_CATEGORIES, canvas_figure, commit_grid, commit_heatmap, layer_step_heatmap,
                           token_labeler)
from .patching_figures import step_layer_pos_figure

__all__ = ["layer_step_heatmap", "canvas_figure", "commit_heatmap", "commit_grid", "token_labeler", "COMMIT_CATEGORIES",
           "attention_figure", "step_layer_pos_figure"]
