"""The interactive trajectory viewer: one self-contained HTML page per run (no network, all inline).

A denoising run is a movie: positions are re-noised, accepted and overwritten step by step. The page
shows it with a step slider (play/pause) and, at the selected step: the canvas as tokens (input
canvas, argmax proposal, sampled tokens, accepted marks, re-noised positions) coloured by the
sampler's entropy; the prompt and the final output; the commit-order timeline (step x position,
`viz.commit_grid`); the logit lens (layer x position, top-k tokens and probabilities on hover) when
the run recorded `blocks.*.hook_resid_post`; a patching result (layer x position of the selected
step, per sweep, values on hover) when given; attention patterns (query x key, per layer and head)
when `blocks.*.attn.hook_pattern` was recorded. The AR twin works too (one token per step).

    >>> traj = view_capture(model, "1234+5678=")           # records what the page shows
    >>> write_page(traj, "run.html", model=model)          # = traj.to_html("run.html", model=model)

Size: only compact tensors go into the page, never a vocabulary axis: the lens as top-k token
indices (`k`, default 3) with uint16 probabilities, patching grids as int16 with one scale per
sweep, attention as uint8; token ids point into one table of token strings. A page of the released
shapes (canvas 256, 48 steps, 30 layers, vocabulary 262,144, lens + all five patching sweeps, no
attention) stays under 20 MB (`tests/test_viewer.py`); `page_bytes` estimates it; attention patterns
are refused past `max_attention_bytes` (record fewer layers / steps).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from dgt_interp.atomic import write_text
from dgt_interp.capturing import capture
from dgt_interp.errors import DgtInterpError
from dgt_interp.lens import LensResult, LogitLens
from dgt_interp.patching import normalise
from dgt_interp.tokenizer import decode_until_eos, load_tokenizer, position_labels, prompt_batch, to_str_tokens
from dgt_interp.trajectory import Trajectory
from dgt_interp.viz.lens_figures import COMMIT_CATEGORIES, check_batch, commit_grid

PAGE_K = 3  # lens top-k kept in a page (hover shows them)
MAX_ATTENTION_BYTES = 8 * 2**20
LENS_NAMES = "blocks.*.hook_resid_post"
ATTENTION_NAMES = "blocks.*.attn.hook_pattern"
PATCH_SWEEPS = ("resid_pre", "attn_out", "mlp_out", "self_cond", "canvas")


class ViewerError(DgtInterpError, ValueError):
    """Bad viewer input (one-line message that says what to do)."""


# ---------------------------------------------------------------------------------------------
# compact encodings (decoded by the page's `dec`)
# ---------------------------------------------------------------------------------------------

_DTYPES = {"u8": "<u1", "i8": "<i1", "u16": "<u2", "i16": "<i2", "u32": "<u4", "f32": "<f4"}


def encode(array, dtype: str) -> dict:
    """A numpy/torch array as `{"dtype", "shape", "b64"}` (little-endian bytes, base64)."""
    a = np.ascontiguousarray(np.asarray(array).astype(_DTYPES[dtype]))
    return {"dtype": dtype, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def quantise(values: torch.Tensor) -> tuple[np.ndarray, float]:
    """float tensor -> (int16 array, scale) with value ~= q * scale; NaN -> -32768."""
    v = values.detach().float().cpu().numpy()
    finite = np.isfinite(v)
    peak = float(np.abs(v[finite]).max()) if finite.any() else 0.0
    scale = peak / 32767 if peak > 0 else 1.0
    q = np.where(finite, np.round(np.nan_to_num(v) / scale), -32768).astype(np.int16)
    return q, scale


class TokenTable:
    """Token ids -> indices into one list of token strings (each id decoded once, `to_str_tokens`)."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.ids: dict[int, int] = {}

    def index(self, ids) -> np.ndarray:
        """Same-shaped array of table indices for a tensor / array of token ids."""
        a = np.asarray(torch.as_tensor(ids).cpu().numpy(), dtype=np.int64)
        uniq, inv = np.unique(a, return_inverse=True)
        table = np.array([self.ids.setdefault(int(u), len(self.ids)) for u in uniq], dtype=np.int64)
        return table[inv].reshape(a.shape)

    def strings(self) -> list[str]:
        ids = list(self.ids)
        if self.tokenizer is None:
            return [f"<id {i}>" for i in ids]
        return to_str_tokens(self.tokenizer, ids)

    @property
    def dtype(self) -> str:
        return "u16" if len(self.ids) < 2**16 else "u32"


# ---------------------------------------------------------------------------------------------
# inputs: a lens, a patching result, attention patterns
# ---------------------------------------------------------------------------------------------


def view_capture(model, prompt: str, *, tokenizer=None, chat: bool = False, seed: int = 0, attention: bool = False,
                 lens: bool = True, **capture_kwargs) -> Trajectory:
    """Capture one prompt with what the page shows: `blocks.*.hook_resid_post` (the logit lens) and,
    with `attention=True` (DiffusionGemma), `blocks.*.attn.hook_pattern`. `capture_kwargs` go to
    `capture` (steps=, positions=, backend=, sampler settings such as `max_denoising_steps`)."""
    tok = tokenizer if tokenizer is not None else load_tokenizer(model)
    batch = prompt_batch([prompt], tok, chat=chat)
    names = ([LENS_NAMES] if lens else []) + ([ATTENTION_NAMES] if attention else [])
    traj = capture(model, batch["input_ids"].to(model.device), attention_mask=batch["attention_mask"].to(model.device),
                   names=names or None, seed=seed, **capture_kwargs)
    traj.meta.setdefault("prompt_text", prompt)
    return traj


def load_patching(source) -> dict:
    """A patching result as `{"sweeps": {name: [step, layer, pos] or [step, pos] tensor}, "summary": dict}`.

    `source`: the output dir of `dgt-interp patch` (`patching.safetensors` + `patching.json`), or a
    mapping of sweep name -> grid (optionally with `clean_metric` / `corrupted_metric` to normalise
    by, and `summary`). Raw grids are normalised like the patch command's figures when both metrics
    are known."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        tensors_file, json_file = root / "patching.safetensors", root / "patching.json"
        if not tensors_file.is_file() or not json_file.is_file():
            raise ViewerError(f"--patching {str(root)!r} holds no patching result (patching.safetensors + "
                              "patching.json); pass the --out dir of `dgt-interp patch`")
        try:
            summary = json.loads(json_file.read_text())
            with safe_open(str(tensors_file), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # a truncated or foreign file: say which one
            raise ViewerError(f"--patching {str(root)!r} is corrupt ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); rerun `dgt-interp patch`") from None
        if not isinstance(summary, dict):
            raise ViewerError(f"--patching {str(root)!r}: patching.json is not a patch summary; rerun `dgt-interp patch`")
    elif isinstance(source, Mapping):
        tensors = {k: torch.as_tensor(v) for k, v in source.items() if k != "summary"}
        summary = dict(source.get("summary") or {})
    else:
        raise ViewerError(f"patching= takes a `dgt-interp patch` output dir or a mapping of sweep grids, "
                          f"got {type(source).__name__}")
    clean, corrupted = tensors.pop("clean_metric", None), tensors.pop("corrupted_metric", None)
    rank = {name: i for i, name in enumerate(PATCH_SWEEPS)}  # the patch command's order first (resid_pre ...)
    sweeps = {k: tensors[k].float() for k in sorted(tensors, key=lambda k: (rank.get(k, len(rank)), k))
              if not k.startswith("attribution_")}
    if not sweeps:
        raise ViewerError("the patching result holds no sweep grid; pass the --out dir of `dgt-interp patch`")
    normalised = clean is not None and corrupted is not None and float(clean) != float(corrupted)
    if normalised:
        sweeps = {k: normalise(v, float(clean), float(corrupted)) for k, v in sweeps.items()}
    return {"sweeps": sweeps, "summary": summary, "normalised": normalised}


def check_patching(result: dict, traj: Trajectory, n_layers: int | None, prompt_labels: list[str] | None) -> None:
    """One-line `ViewerError` unless a patching result belongs to this run: same steps, canvas
    positions, layers and prompt tokens."""
    length = int(traj.records["argmax_canvas"].shape[-1])
    for name, grid in result["sweeps"].items():
        want = (traj.n_steps, n_layers, length) if grid.dim() == 3 else (traj.n_steps, length)
        got = tuple(grid.shape)
        if grid.dim() not in (2, 3) or any(w is not None and w != g for w, g in zip(want, got)):
            shown = ", ".join("?" if w is None else str(w) for w in want)
            raise ViewerError(f"the patching result is of another run: sweep {name!r} has shape {list(got)}, this run "
                              f"needs [{shown}] (step, layer, pos); pass the patch output of this prompt and model")
    theirs = result["summary"].get("clean_tokens")
    if prompt_labels is not None and theirs is not None and list(theirs) != list(prompt_labels):
        raise ViewerError(f"the patching result is of another run: its clean prompt is {' '.join(theirs)}, this run's is "
                          f"{' '.join(prompt_labels)}; pass the patch output of this prompt")


# ---------------------------------------------------------------------------------------------
# the page's data
# ---------------------------------------------------------------------------------------------


def page_data(traj: Trajectory, *, model=None, tokenizer=None, lens: LensResult | bool | None = None,
              patching=None, batch: int = 0, k: int = PAGE_K, title: str | None = None,
              max_attention_bytes: int = MAX_ATTENTION_BYTES) -> dict:
    """Everything the page shows, as JSON-ready compact arrays (see the module docstring).

    lens: a `LensResult`, False (none), or None = `LogitLens(model).run(traj, k=k)` when a model is
    given or attached and the run recorded `blocks.{l}.hook_resid_post` of every layer.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ViewerError(f"k={k!r} must be an int >= 1 (lens top-k tokens per cell)")
    try:
        check_batch(traj, batch)
    except DgtInterpError as e:
        raise ViewerError(str(e)) from None
    if model is not None and traj.model is not model:
        traj.attach(model)
    tok = tokenizer if tokenizer is not None else traj.tokenizer
    table = TokenTable(tok)
    rec = traj.records
    prompt_ids = traj.prompt_ids(batch, tok) if tok is not None else traj.sequences[batch, :traj.meta["prompt_length"]]
    prompt_labels = position_labels(to_str_tokens(tok, prompt_ids), "p") if tok is not None else None
    generated = traj.sequences[batch, traj.meta["prompt_length"]:]
    data = {
        "version": 1, "title": title or f"{traj.meta.get('model_class', 'model')} run", "kind": traj.kind,
        "n_steps": traj.n_steps, "canvas_length": int(rec["argmax_canvas"].shape[-1]), "batch": batch,
        "tokenizer": tok is not None,
        "prompt": {"text": traj.meta.get("prompt_text"), "tokens": table.index(prompt_ids).tolist()},
        "output": {"text": decode_until_eos(tok, generated) if tok is not None else None,
                   "tokens": table.index(generated).tolist()},
        "settings": plain(traj.meta.get("generation_kwargs", {})), "seed": plain(traj.meta.get("seed")),
    }
    steps = {name: table.index(rec[name][:, batch]) for name in ("input_canvas", "argmax_canvas", "sampled_canvas")}
    grid, _ = commit_grid(traj, batch=batch)
    data["steps"] = {
        "accepted": encode(rec["accepted"][:, batch].bool(), "u8"),
        "entropy": encode(rec["entropy"][:, batch].float(), "f32"),
        "active": rec["active"][:, batch].bool().int().tolist(),
        "cur_step": rec["cur_step"].tolist(), "canvas": rec["canvas"].tolist(),
        "commit": encode(grid, "i8"), "commit_categories": list(COMMIT_CATEGORIES),
    }
    # lens
    res = lens
    if res is None and traj.model is not None:  # every layer's residual recorded: the logit lens of the run
        n = traj.model.config.get_text_config().num_hidden_layers
        if all(LENS_NAMES.replace("*", str(layer)) in traj.names for layer in range(n)):
            res = LogitLens(traj.model).run(traj, k=k)
    data["lens"] = None
    if isinstance(res, LensResult):
        kk = min(k, res.top_ids.shape[-1])
        data["lens"] = {"name": res.lens, "steps": res.steps, "layers": res.layers, "positions": res.positions, "k": kk,
                        "ids": table.index(res.top_ids[:, :, batch, :, :kk]),
                        "probs": encode(np.round(res.top_probs[:, :, batch, :, :kk].clamp(0, 1).numpy() * 65535), "u16"),
                        "valid": encode(res.valid[:, batch].bool(), "u8")}
    n_layers = len(res.layers) if isinstance(res, LensResult) else None
    if n_layers is None and traj.model is not None:
        n_layers = int(traj.model.config.get_text_config().num_hidden_layers)
    # patching
    data["patching"] = None
    if patching is not None:
        result = patching if isinstance(patching, dict) and "sweeps" in patching and "normalised" in patching \
            else load_patching(patching)
        check_patching(result, traj, n_layers, prompt_labels)
        sweeps = {}
        for name, g in result["sweeps"].items():
            q, scale = quantise(g)
            sweeps[name] = {"values": encode(q, "i16"), "scale": scale}
        s = result["summary"]
        data["patching"] = {"sweeps": sweeps, "normalised": result["normalised"],
                            "about": {x: plain(s.get(x)) for x in ("clean", "corrupted", "metric", "clean_metric",
                                                              "corrupted_metric", "rounding_noise") if x in s}}
    # attention
    data["attention"] = attention_data(traj, batch, table, max_attention_bytes)
    # the canvases last: every token index is known once the lens and attention have added theirs
    for name, idx in steps.items():
        data["steps"][name] = encode(idx, table.dtype)
    if data["lens"] is not None:
        data["lens"]["ids"] = encode(data["lens"]["ids"], table.dtype)
    data["strings"] = table.strings()
    return data


def attention_data(traj: Trajectory, batch: int, table: TokenTable, max_bytes: int) -> dict | None:
    """Recorded attention patterns of row `batch` as uint8 `[step, layer, head, query, key]` (weight * 255)."""
    names = sorted((n for n in traj.names if n.endswith("attn.hook_pattern")), key=lambda n: int(n.split(".")[1]))
    if not names:
        return None
    first = traj[names[0]]
    n_bytes = first[:, batch].numel() * len(names)
    if n_bytes > max_bytes:
        raise ViewerError(f"the recorded attention patterns take {n_bytes / 2**20:.0f} MiB in the page (limit "
                          f"{max_bytes / 2**20:.0f} MiB); record fewer layers or steps (capture names="
                          "'blocks.{l}.attn.hook_pattern', steps=...) or raise max_attention_bytes")
    pats = torch.stack([traj[n][:, batch].float() for n in names], 1)  # [R, layer, head, query, key]
    steps = traj.recorded_steps
    n_q, n_k = pats.shape[-2], pats.shape[-1]
    n_cached = n_k - n_q
    keys = [table.index(torch.cat([traj.sequences[batch, :n_cached], traj.records["input_canvas"][s, batch]])).tolist()
            for s in steps]
    return {"steps": steps, "layers": [int(n.split(".")[1]) for n in names], "n_cached": n_cached,
            "keys": keys, "weights": encode(np.round(pats.clamp(0, 1).numpy() * 255), "u8")}


def render_html(data: dict) -> str:
    """The page: the template with `data` inlined as JSON (no external resource of any kind)."""
    template = resources.files("dgt_interp.viz").joinpath("viewer_template.html").read_text(encoding="utf-8")
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return template.replace("/*DATA*/null", blob, 1)


def check_out_path(path) -> Path:
    """One-line `ViewerError` unless `path` can take the page: its directory exists, it is not a directory."""
    path = Path(path)
    if path.is_dir():
        raise ViewerError(f"--out {str(path)!r} is a directory; pass a file path such as {str(path / 'run.html')!r}")
    if not path.parent.is_dir():
        raise ViewerError(f"--out {str(path)!r}: the directory {str(path.parent)!r} does not exist; create it first")
    return path


def write_page(traj: Trajectory, path, **kwargs) -> Path:
    """Write the viewer page of `traj` to `path` (whole or not at all); `kwargs` as `page_data`."""
    path = check_out_path(path)
    return write_text(path, render_html(page_data(traj, **kwargs)))


def plain(x):
    """JSON-safe copy of plain data: non-finite floats -> None, other objects -> their repr."""
    if isinstance(x, Mapping):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (int, str, bool)):
        return x
    return repr(x)


__all__ = ["ViewerError", "view_capture", "load_patching", "check_patching", "page_data", "render_html", "write_page",
           "check_out_path", "attention_data", "TokenTable", "encode", "quantise", "plain", "PAGE_K"]
