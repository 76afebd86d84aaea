"""Attention patterns of one denoising step: which tokens each canvas position reads, per head.

`attention_figure(traj, step, layer)` draws `blocks.{layer}.attn.hook_pattern` at `step` for one batch
row: one panel per head, rows = the canvas positions (queries, labelled with the input canvas of that
step), columns = the keys: the cached tokens (prompt, then earlier canvases) and the canvas, split
by a red line. Record the patterns first: `capture(model, ids, names="blocks.*.attn.hook_pattern")`
(they run eager attention; see docs/concepts.md).
"""

from __future__ import annotations

from matplotlib.figure import Figure

from dgt_interp.lens import LensError
from dgt_interp.viz.lens_figures import check_batch, fontsize, token_labeler


def attention_figure(traj, step: int, layer: int, *, batch: int = 0, heads=None, tokenizer=None) -> Figure:
    """Per-head heatmaps of the attention weights at `step` and `layer` (`[canvas query, key]`), one row."""
    name = f"blocks.{layer}.attn.hook_pattern"
    if name not in traj.activations:
        raise LensError(f"{name} was not recorded; capture with names='blocks.*.attn.hook_pattern' "
                        "(DiffusionGemma; it runs eager attention)")
    check_batch(traj, batch)
    pattern = traj[name][traj.step_index(step), batch]  # [head, canvas, keys]
    n_heads, n_q, n_k = pattern.shape
    heads = list(range(n_heads)) if heads is None else list(heads)
    bad = [h for h in heads if not isinstance(h, int) or not 0 <= h < n_heads]
    if bad or not heads:
        raise LensError(f"heads {bad or heads!r} out of range: layer {layer} has {n_heads} heads (0..{n_heads - 1})")
    label = token_labeler(tokenizer if tokenizer is not None else traj.tokenizer)
    n_cached = n_k - n_q
    canvas = traj.records["input_canvas"][step, batch]
    keys = [label(t) for t in traj.sequences[batch, :n_cached]] + [label(t) for t in canvas]
    queries = [f"{q}:{label(t)}" for q, t in enumerate(canvas)]
    n_cols = min(2, len(heads))
    n_rows = -(-len(heads) // n_cols)
    width, height = min(7.0, 1.0 + 0.28 * n_k), 1.2 + 0.3 * n_q
    fig = Figure(figsize=(1.2 + width * n_cols, 0.5 + height * n_rows), layout="constrained")
    grid = fig.subplots(n_rows, n_cols, squeeze=False)
    axes = list(grid.flat)[:len(heads)]
    for extra in list(grid.flat)[len(heads):]:
        extra.remove()
    for i, (ax, h) in enumerate(zip(axes, heads)):
        im = ax.imshow(pattern[h].float().numpy(), vmin=0.0, vmax=1.0, cmap="Blues", aspect="auto",
                       interpolation="nearest")
        ax.axvline(n_cached - 0.5, color="red", lw=1)
        ax.set_xticks(range(n_k), keys, fontsize=fontsize(n_q, n_k))
        ax.set_yticks(range(n_q), queries if i % n_cols == 0 else [""] * n_q, fontsize=fontsize(n_q, n_k))
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xlabel("key: cached | canvas")
        if i % n_cols == 0:
            ax.set_ylabel("canvas query")
    fig.colorbar(im, ax=list(axes), label="attention weight")
    fig.suptitle(f"attention, layer {layer}, step {step} (batch {batch})", fontsize=10)
    return fig


__all__ = ["attention_figure"]
