"""`dgt-interp patch`: sweeps of one clean/corrupted prompt pair on a model, written as PNGs + one tensor file.

The metric is chosen from the two runs: the first output position where the clean and corrupted
outputs differ; `logit_diff` = logit(clean token) - logit(corrupted token) there, `prob` = the
probability of the clean answer tokens at every differing position, `exact` = exact match of those.
Every sweep is normalised like TL's docs, (patched - corrupted) / (clean - corrupted); raw values
and the baselines go to `patching.safetensors` as well. `patching.json` also gives the metric's
rounding noise (`Patching.rounding_noise`): raw effects at or below it are float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dgt_interp.atomic import atomic_dir, save_figure, save_tensors, write_text
from dgt_interp.attribution import attribution_patch
from dgt_interp.models import load_model
from dgt_interp.patching import (
    AnswerProb,
    ExactMatch,
    LogitDiff,
    Patching,
    PatchingError,
    get_act_patch_attn_out,
    get_act_patch_canvas,
    get_act_patch_mlp_out,
    get_act_patch_resid_pre,
    get_act_patch_self_cond,
    normalise,
)
from dgt_interp.tokenizer import load_tokenizer, position_labels, prompt_batch, to_str_tokens
from dgt_interp.viz.patching_figures import step_layer_pos_figure

SWEEPS = ("resid_pre", "attn_out", "mlp_out", "self_cond", "canvas")
METRICS = ("logit_diff", "prob", "exact")


def run_patch(model_ref: str, clean: str, corrupted: str, out: str | Path, *, sweeps=SWEEPS, metric: str = "logit_diff",
              seed: int = 0, batch_size: int = 64, attribution: bool = False, progress: bool = True,
              chat: bool = False) -> dict:
    """Run the sweeps and write `out/<sweep>.png`, `out/patching.safetensors`, `out/patching.json`.

    Prompts go through the model's own tokenizer (`chat=True`: its chat template); `patching.json`
    names the prompt positions (`p3:'def'`) and the metric's canvas positions and tokens as text.
    """
    bad = [s for s in sweeps if s not in SWEEPS]
    if bad:
        raise PatchingError(f"unknown sweep {bad[0]!r}; choose from {', '.join(SWEEPS)}")
    if metric not in METRICS:
        raise PatchingError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PatchingError(f"--batch-size {batch_size!r} must be an int >= 1")
    if Path(out).exists() and not Path(out).is_dir():
        raise PatchingError(f"--out {str(out)!r} exists and is not a directory; pass a directory path")
    model = load_model(model_ref)
    tok = load_tokenizer(model)
    ids_c, ids_k = prompt_batch([clean], tok, chat=chat)["input_ids"], prompt_batch([corrupted], tok, chat=chat)["input_ids"]
    if ids_c.shape != ids_k.shape:
        raise PatchingError(f"the clean and corrupted prompts have {ids_c.shape[1]} and {ids_k.shape[1]} tokens "
                            f"(clean: {to_str_tokens(tok, ids_c[0])}, corrupted: {to_str_tokens(tok, ids_k[0])}); "
                            "patching needs the same number of tokens: change the corruption")
    p = Patching(model, ids_c, ids_k, seed=seed)
    if p.kind != "diffusion":
        sweeps = [s for s in sweeps if s not in ("self_cond", "canvas")]
    n = ids_c.shape[1]
    out_c, out_k = p.clean.sequences[0, n:], p.corrupted.sequences[0, n:]
    diff = (out_c != out_k).nonzero().flatten().tolist()
    if not diff:
        raise PatchingError("the clean and corrupted prompts give the same output; pick a corruption that "
                            "changes the answer")
    if metric == "logit_diff":
        m = LogitDiff(pos=diff[0], correct=int(out_c[diff[0]]), wrong=int(out_k[diff[0]]))
    elif metric == "prob":
        m = AnswerProb(pos=diff, tokens=out_c[diff].tolist())
    else:
        m = ExactMatch(pos=diff, tokens=out_c[diff].tolist())
    clean_v, corr_v = p.clean_metric(m), p.corrupted_metric(m)
    if clean_v == corr_v:
        raise PatchingError(f"metric {metric} is equal on the clean and corrupted runs; nothing to normalise")
    fns = {"resid_pre": get_act_patch_resid_pre, "attn_out": get_act_patch_attn_out, "mlp_out": get_act_patch_mlp_out,
           "self_cond": get_act_patch_self_cond, "canvas": get_act_patch_canvas}
    canvas_labels = position_labels(to_str_tokens(tok, out_c), "c")  # the clean output, per canvas position
    with atomic_dir(out) as out:  # the whole dir is replaced at once: never old and new files mixed
        tensors = {"clean_metric": torch.tensor(clean_v), "corrupted_metric": torch.tensor(corr_v)}
        for s in sweeps:
            grid = fns[s](p, m, batch_size=batch_size, progress=progress)
            tensors[s] = grid
            norm = normalise(grid, clean_v, corr_v)
            title = f"{s}: {clean!r} -> {corrupted!r}, {metric} (normalised)"
            labels = canvas_labels if norm.shape[-1] == len(canvas_labels) else None
            save_figure(out / f"{s}.png", step_layer_pos_figure(norm, title=title, position_labels=labels))
            if attribution and s in ("resid_pre", "attn_out", "mlp_out"):
                est = attribution_patch(p, m, f"blocks.*.hook_{s}")
                tensors[f"attribution_{s}"] = est
                save_figure(out / f"attribution_{s}.png",
                            step_layer_pos_figure(est / (clean_v - corr_v), title=f"attribution {s} (normalised)",
                                                  position_labels=labels))
        save_tensors(out / "patching.safetensors", {k: v.float() for k, v in tensors.items()})
        summary = {"model": model_ref, "clean": clean, "corrupted": corrupted, "seed": seed, "metric": metric,
                   "metric_positions": diff if metric != "logit_diff" else [diff[0]], "clean_metric": clean_v,
                   "corrupted_metric": corr_v, "rounding_noise": p.rounding_noise(m, n=64, batch_size=batch_size),
                   "steps": p.n_steps, "sweeps": list(sweeps), "chat": chat,
                   "clean_tokens": position_labels(to_str_tokens(tok, ids_c[0]), "p"),
                   "corrupted_tokens": position_labels(to_str_tokens(tok, ids_k[0]), "p"),
                   "metric_tokens": {f"c{i}": {"clean": to_str_tokens(tok, [out_c[i]])[0],
                                               "corrupted": to_str_tokens(tok, [out_k[i]])[0]} for i in diff},
                   "layout": "[step, layer, pos] (self_cond, canvas: [step, pos]); NaN = hook absent"}
        write_text(out / "patching.json", json.dumps(summary, indent=1))
    return summary


__all__ = ["run_patch", "SWEEPS", "METRICS"]
