"""Figures for the lens and the denoising run: layer × step heatmaps, the canvas, commit timing.

Every function returns a matplotlib `Figure` built without pyplot (so no global backend is touched
and nothing opens a window); save it with `fig.savefig("x.png")`.

- `layer_step_heatmap(result, position=..., metric="target")`: a `LensResult` as a layer × step
  grid for one position (probability of a target token, top-1 probability, entropy or KL to final,
  each cell labelled with the lens's top-1 token), or KL/entropy averaged over positions.
- `canvas_figure(traj)`: position × step, each cell the token of a canvas record (argmax by
  default), coloured by the sampler's entropy; accepted cells are boxed.
- `commit_heatmap(traj)`: position × step, when each position is accepted and when its argmax
  settles on the final token (and stays there).
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from dgt_interp.lens import LensError, LensResult
from dgt_interp.trajectory import TrajectoryError
from dgt_interp.tokenizer import to_str_tokens

METRICS = {  # name -> (LensResult field, colour bar label, colormap, fixed range)
    "target": ("target_probs", "P(target)", "viridis", (0.0, 1.0)),
    "top1": ("top_probs", "top-1 probability", "viridis", (0.0, 1.0)),
    "entropy": ("entropy", "lens entropy (nats)", "magma", None),
    "kl": ("kl_to_final", "KL(final || lens) (nats)", "magma", None),
}
SHORT = {"<pad>": "_", "<eos>": "$", "<bos>": "^"}


def token_labeler(tokenizer=None):
    """id -> short label through `tokenizer` (EOS `$`, pad `_`, BOS `^`); the bare id without one."""

    def label(i: int) -> str:
        if tokenizer is None:
            return str(int(i))
        tok = to_str_tokens(tokenizer, [i])[0]  # the text of the token (' foo', not BPE's 'Ġfoo')
        tok = SHORT.get(tok, tok) if not tok.startswith("<id ") else str(int(i))
        if len(tok) > 2 and tok.startswith("<") and tok.endswith(">"):
            tok = tok[1:-1]
        tok = tok.replace("▁", " ").strip() or "␣"
        return tok if len(tok) <= 4 else tok[:3] + "…"

    return label


def _cell_text(ax, grid_labels, values, vmin, vmax, fontsize, dark_high: bool = False):
    """Write labels into imshow cells, black on light cells and white on dark ones.

    `dark_high`: the colormap is dark at high values (e.g. "Blues"); else dark at low ("viridis").
    """
    rows, cols = len(grid_labels), len(grid_labels[0]) if grid_labels else 0
    for r in range(rows):
        for c in range(cols):
            text = grid_labels[r][c]
            if not text:
                continue
            v = values[r, c]
            frac = 0.0 if np.isnan(v) else (v - vmin) / ((vmax - vmin) or 1)
            light = frac < 0.55 if dark_high else frac > 0.6
            ax.text(c, r, text, ha="center", va="center", fontsize=fontsize, color="black" if light else "white")


def fontsize(rows: int, cols: int) -> float:
    """Cells keep a fixed size in inches up to the figure's cap, so labels can too (smaller past it)."""
    return 8.0 if max(rows, cols) <= 30 else max(5.0, 240 / max(rows, cols))


def layer_step_heatmap(result: LensResult, *, position: int | None = None, metric: str = "target",
                       target: int | None = None, batch: int = 0, tokenizer=None, annotate: bool = True) -> Figure:
    """Layer × step heatmap of a lens result.

    Args:
        result: from `LogitLens(model).run(traj, targets=[...])` (or a `TunedLens`).
        position: canvas position; None averages `kl`/`entropy` over valid (batch, position).
        metric: "target" (probability of `target`), "top1", "entropy" or "kl".
        target: token id among `result.targets` (default: the only one tracked).
        batch: batch row.
        annotate: label each cell with the lens's top-1 token (needs `position`).
    """
    if metric not in METRICS:
        raise LensError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    field, cbar_label, cmap, fixed = METRICS[metric]
    n_b = result.valid.shape[1]
    if not 0 <= batch < n_b:
        raise LensError(f"batch row {batch} is out of range: the result has {n_b} rows (0..{n_b - 1})")
    label = token_labeler(tokenizer)
    title_target = ""
    if position is None:
        if metric not in ("kl", "entropy"):
            raise LensError(f"metric {metric!r} needs a position; pass position=... (only 'kl' and 'entropy' average over positions)")
        values = (result.kl_table() if metric == "kl" else result.entropy_table()).T.numpy()  # [Ly, S]
        where = "mean over positions and batch"
        labels = None
    else:
        p = result.position_index(position)
        data = getattr(result, field)[:, :, batch, p]  # [S, Ly, ...]
        if metric == "target":
            if target is None:
                if len(result.targets) != 1:
                    raise LensError(f"pass target=... (one of {result.targets or 'none tracked'}; "
                                    "track targets with lens.run(..., targets=[...]))")
                target = result.targets[0]
            data = data[..., result.target_index(target)]
            title_target = repr(label(target))
        elif metric == "top1":
            data = data[..., 0]
        data = data.clone().float()
        data[~result.valid[:, batch, p]] = float("nan")
        values = data.T.numpy()  # [Ly, S]
        where = f"position {position}, batch {batch}"
        top = result.top_ids[:, :, batch, p, 0]  # [S, Ly]
        labels = [[label(top[s, ly]) if result.valid[s, batch, p] else "" for s in range(top.shape[0])]
                  for ly in range(top.shape[1])]
    n_ly, n_s = values.shape
    vmin, vmax = fixed if fixed else (0.0, float(np.nanmax(values)) if np.isfinite(values).any() else 1.0)
    fig = Figure(figsize=(min(14, max(5.0, 2.2 + 0.55 * n_s)), min(10, max(2.8, 1.4 + 0.45 * n_ly))), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(values, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax or 1.0,
                   interpolation="nearest")
    ax.set_facecolor("0.85")  # NaN (no residual at that step) shows grey
    ax.set_xticks(range(n_s), [str(s) for s in result.steps])
    ax.set_yticks(range(n_ly), [str(ly) for ly in result.layers])
    ax.set_xlabel("denoising step")
    ax.set_ylabel("layer (resid_post)")
    name = {"target": f"P({title_target})", "top1": "top-1 probability", "entropy": "entropy",
            "kl": "KL to final"}[metric]
    ax.set_title(f"{result.lens} lens: {name}\n{where}", fontsize=9)
    fig.colorbar(im, ax=ax, label=cbar_label)
    if annotate and labels is not None and n_s * n_ly <= 1600:
        _cell_text(ax, labels, values, vmin, vmax or 1.0, fontsize(n_ly, n_s))
    return fig


def _steps_of(traj, canvas: int | None) -> list[int]:
    if canvas is None:
        return list(range(traj.n_steps))
    try:
        return traj.canvas_steps(canvas)
    except TrajectoryError as e:
        raise LensError(str(e)) from None


def check_batch(traj, batch: int) -> None:
    """A one-line `LensError` unless `batch` is a row of `traj`."""
    n_b = traj.records["active"].shape[1]
    if not isinstance(batch, int) or not 0 <= batch < n_b:
        raise LensError(f"batch row {batch!r} is out of range: the trajectory has {n_b} rows (0..{n_b - 1})")


def _canvas_axes(fig, n_s: int, n_p: int, steps: list[int]):
    ax = fig.add_subplot()
    ax.set_xticks(range(n_p))
    ax.set_yticks(range(n_s), [str(s) for s in steps])
    ax.set_xlabel("canvas position")
    ax.set_ylabel("denoising step")
    return ax


def _canvas_boundaries(ax, traj, steps: list[int], n_p: int) -> None:
    for i in range(1, len(steps)):
        if int(traj.records["canvas"][steps[i]]) != int(traj.records["canvas"][steps[i - 1]]):
            ax.axhline(i - 0.5, color="red", lw=1.5)
    ax.set_xlim(-0.5, n_p - 0.5)


def canvas_figure(traj, *, batch: int = 0, canvas: int | None = None, show: str = "argmax_canvas",
                  tokenizer=None) -> Figure:
    """Position × step canvas of one batch row: tokens of `show`, colour = sampler entropy, boxes = accepted.

    `show`: "argmax_canvas" (default), "sampled_canvas" or "input_canvas". `canvas` restricts to one
    canvas (block) of a multi-canvas run; red lines separate canvases otherwise. Steps where the row
    had already finished are greyed.
    """
    if show not in ("argmax_canvas", "sampled_canvas", "input_canvas"):
        raise LensError(f"unknown canvas record {show!r}; choose argmax_canvas, sampled_canvas or input_canvas")
    check_batch(traj, batch)
    steps = _steps_of(traj, canvas)
    st = torch.tensor(steps, dtype=torch.long)
    tokens = traj.records[show][st, batch]  # [S, L]
    ent = traj.records["entropy"][st, batch].float().clone()  # [S, L]
    acc = traj.records["accepted"][st, batch].bool()
    active = traj.records["active"][st, batch].bool()
    if traj.kind == "ar":  # positions not generated yet hold no entropy
        ent[torch.arange(tokens.shape[1])[None, :] > st[:, None]] = float("nan")
    ent[~active] = float("nan")
    values = ent.numpy()
    n_s, n_p = values.shape
    label = token_labeler(tokenizer if tokenizer is not None else traj.tokenizer)
    vmax = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    fig = Figure(figsize=(min(16, max(5.5, 2.4 + 0.5 * n_p)), min(14, max(2.6, 1.3 + 0.38 * n_s))), layout="constrained")
    ax = _canvas_axes(fig, n_s, n_p, steps)
    ax.set_facecolor("0.85")
    im = ax.imshow(values, aspect="auto", cmap="Blues", vmin=0.0, vmax=vmax or 1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="sampler entropy (nats)")
    labels = [[label(tokens[s, p]) for p in range(n_p)] for s in range(n_s)]
    _cell_text(ax, labels, values, 0.0, vmax or 1.0, fontsize(n_s, n_p), dark_high=True)
    for s, p in acc.nonzero().tolist():
        ax.add_patch(Rectangle((p - 0.5, s - 0.5), 1, 1, fill=False, edgecolor="darkorange", lw=2))
    _canvas_boundaries(ax, traj, steps, n_p)
    ax.set_title(f"{show.replace('_', ' ')} per step (batch {batch}); orange box = accepted", fontsize=9)
    return fig


COMMIT_CATEGORIES = ("argmax not final", "argmax final from here on", "accepted, changes later", "accepted, final")


def commit_grid(traj, *, batch: int = 0, canvas: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """`[S, L]` category per (step, position) of one row (index into `COMMIT_CATEGORIES`; -1 = row finished).

    "final" = the argmax token at the last step of that step's canvas; "from here on" = the argmax
    equals it at this step and every later step of the canvas. Returns (grid, steps).
    """
    check_batch(traj, batch)
    steps = _steps_of(traj, canvas)
    arg = traj.records["argmax_canvas"][:, batch]  # [S_all, L]
    canvas_of = traj.records["canvas"].long()
    grid = torch.zeros(len(steps), arg.shape[1], dtype=torch.long)
    for i, s in enumerate(steps):
        later = [t for t in range(s, traj.n_steps) if canvas_of[t] == canvas_of[s]]
        final = arg[later[-1]]
        settled = (arg[later] == final).all(0)
        accepted = traj.records["accepted"][s, batch].bool()
        grid[i] = settled.long() + 2 * accepted.long()
        if not bool(traj.records["active"][s, batch]):
            grid[i] = -1
    return grid, steps


def commit_heatmap(traj, *, batch: int = 0, canvas: int | None = None, tokenizer=None) -> Figure:
    """Position × step: when each position is accepted by the sampler and when its argmax settles.

    Cells are labelled with the argmax token (what `generate` emits at the end); an accepted cell
    keeps the *sampled* token in the next input canvas, which may differ from the argmax.
    """
    grid, steps = commit_grid(traj, batch=batch, canvas=canvas)
    st = torch.tensor(steps, dtype=torch.long)
    n_s, n_p = grid.shape
    label = token_labeler(tokenizer if tokenizer is not None else traj.tokenizer)
    colors = ["#d9d9d9", "#9ecae1", "#fdae6b", "#e6550d"]
    values = grid.float().numpy()
    values[values < 0] = np.nan
    fig = Figure(figsize=(min(16, max(6.5, 3.4 + 0.5 * n_p)), min(14, max(2.6, 1.3 + 0.38 * n_s))), layout="constrained")
    ax = _canvas_axes(fig, n_s, n_p, steps)
    ax.set_facecolor("white")
    ax.imshow(values, aspect="auto", cmap=ListedColormap(colors), vmin=-0.5, vmax=3.5, interpolation="nearest")
    argmax = traj.records["argmax_canvas"][st, batch]
    labels = [[("" if grid[s, p] < 0 else label(argmax[s, p])) for p in range(n_p)] for s in range(n_s)]
    fs = fontsize(n_s, n_p)
    for s in range(n_s):
        for p in range(n_p):
            if labels[s][p]:
                ax.text(p, s, labels[s][p], ha="center", va="center", fontsize=fs,
                        color="white" if grid[s, p] == 3 else "black")
    _canvas_boundaries(ax, traj, steps, n_p)
    fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(colors, COMMIT_CATEGORIES)], loc="outside right upper",
               fontsize=8)
    ax.set_title(f"commit timing (batch {batch}); labels = argmax token", fontsize=9)
    return fig


__all__ = ["layer_step_heatmap", "canvas_figure", "commit_heatmap", "commit_grid", "token_labeler", "METRICS",
           "COMMIT_CATEGORIES"]
