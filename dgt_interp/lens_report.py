"""`dgt-interp lens`: run the logit (and tuned) lens on one prompt and write figures + tensors.

`lens_report(...)` is the whole command as a function: capture one generation, apply the lenses,
save compact tensors (`lens_logit.safetensors`, `lens_tuned.safetensors`), PNG figures and a
`summary.json` (answer, KL tables, last-layer check) into `out_dir`. Optionally trains a tuned
lens first on the model's task (`fit_tuned=DIR`), reporting logit vs tuned KL on held-out prompts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dgt_interp.atomic import atomic_dir, save_figure, write_text
from dgt_interp.lens import LensError, LogitLens, TunedLens, format_kl_table, lens_capture
from dgt_interp.models import is_diffusion, load_model
from dgt_interp.sampling import entropy_bound_kwargs
from dgt_interp.tasks import get_task
from dgt_interp.tokenizer import decode_until_eos, load_tokenizer, to_str_tokens
from dgt_interp.viz import canvas_figure, commit_heatmap, layer_step_heatmap
from dgt_interp.zoo import resolve


def _table(t) -> list[list[float | None]]:
    """A `[step, layer]` tensor as JSON-safe nested lists (NaN -> None)."""
    return [[None if math.isnan(v) else v for v in row] for row in t.tolist()]


def generation_kwargs(model, entropy_bound, max_denoising_steps) -> dict:
    """`generate` settings of the CLI's sampler options (`--entropy-bound`, `--max-denoising-steps`), checked."""
    kwargs = {}
    if not is_diffusion(model):
        if entropy_bound is not None or max_denoising_steps is not None:
            raise LensError("--entropy-bound and --max-denoising-steps apply to diffusion models only; drop them for the AR twin")
        return kwargs
    if entropy_bound is not None:
        if not math.isfinite(entropy_bound) or entropy_bound < 0:
            raise LensError(f"--entropy-bound {entropy_bound!r} must be a finite number >= 0 (smaller = more steps)")
        kwargs.update(entropy_bound_kwargs(entropy_bound))
    if max_denoising_steps is not None:
        if max_denoising_steps < 1:
            raise LensError(f"--max-denoising-steps {max_denoising_steps!r} must be >= 1")
        kwargs["max_denoising_steps"] = int(max_denoising_steps)
    return kwargs


def _task_of(model_name: str, task: str | None):
    if task is None:
        recipe = Path(resolve(model_name)).expanduser() / "recipe.json"
        task = json.loads(recipe.read_text()).get("task") if recipe.is_file() else None
    if task is None:
        raise LensError(f"no task known for {model_name!r} (no recipe.json); pass --task to train a tuned lens")
    return get_task(task)


def _target_id(tok, target: str) -> int:
    """The id of `target`: a vocabulary entry (`'7'`, BPE's `'Ġfoo'`) or text that is exactly one token (`' foo'`)."""
    tid = tok.convert_tokens_to_ids(target)
    if tid is not None and tok.convert_ids_to_tokens(tid) == target:
        return int(tid)
    ids = tok(target, add_special_tokens=False)["input_ids"] if target else []
    if len(ids) == 1 and to_str_tokens(tok, ids)[0] == target:
        return int(ids[0])
    raise LensError(f"unknown target token {target!r}; pass one token of the model's vocabulary (e.g. a digit; "
                    f"this text is {len(ids)} tokens: {to_str_tokens(tok, ids)})")


def top_k_tokens(res, tok, position: int, batch: int = 0) -> dict:
    """The lens's top-k at canvas `position` of row `batch` at its last valid step, per layer, as text:
    `{"step": s, "layers": {layer: [[token, prob], ...]}}` (token strings by `to_str_tokens`)."""
    pi = res.position_index(position)
    valid = [i for i in range(len(res.steps)) if bool(res.valid[i, batch, pi])]
    si = valid[-1] if valid else len(res.steps) - 1
    layers = {}
    for li, layer in enumerate(res.layers):
        ids, probs = res.top_ids[si, li, batch, pi].tolist(), res.top_probs[si, li, batch, pi].tolist()
        layers[layer] = [[t, round(float(p), 6)] for t, p in zip(to_str_tokens(tok, ids), probs)]
    return {"step": res.steps[si], "layers": layers}


def fit_tuned_lens(model, task, *, n: int = 256, iters: int = 300, step_buckets: int = 1, seed: int = 0,
                   **generation_kwargs) -> tuple[TunedLens, dict]:
    """Train a tuned lens on `n` train-split prompts of `task`; KL tables on `n // 2` held-out prompts.

    Returns (lens, report) with report = {"logit": [step][layer], "tuned": [step][layer], "text": str}.
    """
    train = lens_capture(model, [p.prompt for p in task.problems("train", n, seed=seed)], seed=seed, **generation_kwargs)
    lens = TunedLens(model, step_buckets=step_buckets)
    lens.fit(train, iters=iters, seed=seed)
    held = lens_capture(model, [p.prompt for p in task.problems("test", max(1, n // 2), seed=seed)], seed=seed + 1,
                        **generation_kwargs)
    logit_res, tuned_res = LogitLens(model).run(held), lens.run(held)
    report = {"logit": _table(logit_res.kl_table()), "tuned": _table(tuned_res.kl_table()),
              "steps": logit_res.steps, "layers": logit_res.layers,
              "text": format_kl_table(logit_res, tuned_res)}
    return lens, report


def lens_report(model_name: str, prompt: str, out_dir: str | Path, *, position: int = 0, target: str | None = None,
                tuned: str | Path | None = None, fit_tuned: str | Path | None = None, task: str | None = None,
                fit_n: int = 256, fit_iters: int = 300, step_buckets: int = 1, seed: int = 0, k: int = 5,
                entropy_bound: float | None = None, max_denoising_steps: int | None = None, chat: bool = False,
                print_fn=print) -> dict:
    """Run the lens CLI: see the module docstring. Returns the summary written to `summary.json`.

    The prompt goes through the model's own tokenizer (`chat=True`: its chat template); the summary
    labels prompt positions `p{i}:'tok'` and canvas positions `c{j}:'tok'` (`Trajectory.to_str_tokens`)
    and gives each lens's top-k at `position` as token strings.
    """
    if tuned is not None and fit_tuned is not None:
        raise LensError("pass either --tuned (load a lens) or --fit-tuned (train one), not both")
    for what, v in (("-k", k), ("--fit-n", fit_n), ("--fit-iters", fit_iters), ("--step-buckets", step_buckets)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise LensError(f"{what} {v!r} must be an int >= 1")
    for what, d in (("--out", out_dir), ("--fit-tuned", fit_tuned)):
        if d is not None and Path(d).exists() and not Path(d).is_dir():
            raise LensError(f"{what} {str(d)!r} exists and is not a directory; pass a directory path")
    model = load_model(model_name)
    tok = load_tokenizer(model)
    gen = generation_kwargs(model, entropy_bound, max_denoising_steps)
    n_pos = getattr(model.config, "canvas_length", None) or model.generation_config.max_new_tokens
    if not isinstance(position, int) or not 0 <= position < n_pos:
        raise LensError(f"position {position!r} is out of range: the canvas has {n_pos} positions (0..{n_pos - 1})")
    target_id = _target_id(tok, target) if target is not None else None
    lenses = {"logit": LogitLens(model)}
    if tuned is not None:
        lenses["tuned"] = TunedLens.load(tuned, model)
    traj = lens_capture(model, [prompt], tokenizer=tok, chat=chat, seed=seed, record=["logits"], **gen)
    answer = decode_until_eos(tok, traj.sequences[0, traj.meta["prompt_length"]:])
    if target_id is None:  # the token finally emitted at that position
        target_id = int(traj.argmax_canvas[-1, 0, position])
    with atomic_dir(out_dir) as out:  # the whole dir is replaced at once: never old and new files mixed

        summary: dict = {"model": str(model_name), "prompt": prompt, "answer": answer, "position": position,
                         "target": to_str_tokens(tok, [target_id])[0], "target_id": target_id, "steps": traj.n_steps,
                         "seed": seed, "chat": chat}
        labels = traj.to_str_tokens(tokenizer=tok)  # p{i}:'tok' for the prompt, c{j}:'tok' for the generated tokens
        summary["prompt_tokens"] = [x for x in labels if x.startswith("p")]
        summary["canvas_tokens"] = [x for x in labels if x.startswith("c")]
        summary["position_label"] = summary["canvas_tokens"][position] if position < len(summary["canvas_tokens"]) \
            else f"c{position}"
        if fit_tuned is not None:
            lens, report = fit_tuned_lens(model, _task_of(model_name, task), n=fit_n, iters=fit_iters,
                                          step_buckets=step_buckets, seed=seed, **gen)
            lens.save(fit_tuned)
            lenses["tuned"] = lens
            summary["heldout_kl"] = {key: report[key] for key in ("logit", "tuned", "steps", "layers")}
            print_fn(f"tuned lens trained on {fit_n} prompts, saved to {fit_tuned}; held-out KL to final:\n{report['text']}")

        stack = traj.stack("blocks.*.hook_resid_post")
        last = lenses["logit"].logits(stack[:, -1], lenses["logit"].n_layers - 1)
        summary["last_layer_max_abs_diff"] = float((last - traj["logits"]).abs().max())
        files = []
        for name, lens in lenses.items():
            res = lens.run(traj, targets=[target_id], k=k)
            res.save(out / f"lens_{name}.safetensors")
            save_figure(out / f"{name}_target.png",
                        layer_step_heatmap(res, position=position, metric="target", tokenizer=tok), dpi=90)
            save_figure(out / f"{name}_kl.png", layer_step_heatmap(res, metric="kl", tokenizer=tok), dpi=90)
            files += [f"lens_{name}.safetensors", f"{name}_target.png", f"{name}_kl.png"]
            summary[f"kl_{name}"] = _table(res.kl_table())
            summary[f"top_k_{name}"] = top_k_tokens(res, tok, position)
            print_fn(format_kl_table(res))
        save_figure(out / "canvas.png", canvas_figure(traj, tokenizer=tok), dpi=90)
        save_figure(out / "commit.png", commit_heatmap(traj, tokenizer=tok), dpi=90)
        files += ["canvas.png", "commit.png", "summary.json"]
        summary["files"] = files
        write_text(out / "summary.json", json.dumps(summary, indent=1))
    print_fn(f"{prompt} -> {answer!r} in {traj.n_steps} steps; target {summary['target']!r} at position {position}; "
             f"last-layer lens vs model logits: max |diff| = {summary['last_layer_max_abs_diff']:.1e}")
    print_fn(f"positions: {' '.join(summary['prompt_tokens'])} | {' '.join(summary['canvas_tokens'])}")
    top = summary["top_k_logit"]
    last = top["layers"][max(top["layers"])]
    print_fn(f"top-{k} at {summary['position_label']} (step {top['step']}, logit lens, last layer): "
             + ", ".join(f"{t!r} {p:.2f}" for t, p in last))
    print_fn(f"wrote {', '.join(files)} to {out_dir}")
    return summary


__all__ = ["lens_report", "fit_tuned_lens", "top_k_tokens", "generation_kwargs"]
