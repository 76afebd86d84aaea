"""Batched vs one-generate-per-patch sweeps, and attribution patching vs the exact sweep, on a zoo model.

Side by side in one process: the `[step, layer, pos]` resid_pre sweep of an addition problem whose
corrupted prompt changes one operand digit, (a) with all patched copies along the batch axis,
(b) one `generate` per patch; then attribution patching of the same grid, and one unpatched run
(the floor of any method that has to run the model once). Everything is warmed up first (bridges,
name probes); the batched sweep, attribution and the single run are timed best of `--repeats`.
Falls back to a random-init model of the zoo's size (with a note) if no zoo diffusion model is
shipped. Ends with one line per figure: `name: value`.

Rank correlation is over the cells the exact sweep resolves. Any patch perturbs every later float
operation, so even a cell whose true effect is 1e-30 (an early step: the self-conditioning channel
attenuates by ~1e3 per step here) reads a few ulps: its order is noise. The rounding noise is
measured, not assumed: the larger of `Patching.rounding_noise` (one-ulp nudges at random sites) and
|batched - looped| over the looped patches (another float path). Both are maxima of a sample, so
the headline figure compares the cells above twice that (`RESOLUTION`); the correlation at 1, 2, 4,
8 and 64 times the noise is printed beside it, with the all-cells figure and the exact sweep's
correlation with itself (batched vs looped, on the looped cells).

    .venv/bin/python bench/patching.py [--clean 4721+3856=] [--corrupted 4721+3356=] [--threads 1]

The default run uses a low entropy bound and a hot temperature schedule so that the prompts denoise
over all 48 steps: a 1,536-cell `[step, layer, pos]` grid, the regime of a real DiffusionGemma run,
where an exact sweep is costly (the looped time is extrapolated from `--looped-patches` random
cells: one `generate` per patch costs the same wherever the patch sits). `--model-sampler` runs
the model's own sampler instead: these prompts then settle in 2 steps, a 64-cell grid that one
batched `generate` covers, so no method that runs the model once can be much faster than the
batched sweep there (`one_run_speedup_bound`).
"""

from __future__ import annotations

import argparse
import time

import torch


RESOLUTION = 2  # compare cells whose exact effect is above this many times the measured rounding noise


def best_of(fn, repeats: int):
    """(result of the last call, the fastest wall time in seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", default="4721+3856=")
    ap.add_argument("--corrupted", default="4721+3356=")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--entropy-bound", type=float, default=1e-4,
                    help="sampler entropy bound; smaller = more denoising steps = a larger grid")
    ap.add_argument("--temperature", type=float, nargs=2, default=(1.2, 1.6), metavar=("T_MIN", "T_MAX"),
                    help="sampler temperature range; hotter runs use more of the 48 steps (a larger grid)")
    ap.add_argument("--model-sampler", action="store_true",
                    help="use the model's own sampler settings (2 steps on the default prompts)")
    ap.add_argument("--looped-patches", type=int, default=256,
                    help="loop (one generate each) this many random cells of the grid, or all if fewer; "
                         "gives the looped time per patch and the float-noise floor")
    args = ap.parse_args()
    if args.looped_patches < 1 or args.repeats < 1 or args.batch_size < 1:
        ap.error("--looped-patches, --repeats and --batch-size must be >= 1")
    torch.set_num_threads(args.threads)

    from dgt_interp import zoo
    from dgt_interp.attribution import attribution_patch
    from dgt_interp.stats import rank_correlation
    from dgt_interp.evaluate import prompt_batch
    from dgt_interp.models import build_diffusion, load_model
    from dgt_interp.patching import LogitDiff, Patching, Site, get_act_patch_resid_pre

    if "addition-diffusion" in zoo.names():
        name, model = "addition-diffusion", load_model("addition-diffusion")
    else:
        name = "random-init"
        print("note: no zoo diffusion model shipped yet; timing a random-init model of the zoo's size")
        model = build_diffusion(seed=0)
    clean, corrupted = prompt_batch([args.clean])["input_ids"], prompt_batch([args.corrupted])["input_ids"]
    gen = {}
    if not args.model_sampler:
        from dgt_interp.sampling import entropy_bound_kwargs

        gen.update(entropy_bound_kwargs(args.entropy_bound))
        gen["t_min"], gen["t_max"] = args.temperature
    p = Patching(model, clean, corrupted, seed=args.seed, names=["blocks.*.hook_resid_pre"], **gen)
    n = clean.shape[1]
    out_c, out_k = p.clean.sequences[0, n:], p.corrupted.sequences[0, n:]
    diff = (out_c != out_k).nonzero().flatten().tolist()
    pos = diff[0] if diff else 0
    metric = LogitDiff(pos=pos, correct=int(out_c[pos]), wrong=int(out_k[pos]))
    print(f"model={name} clean={args.clean!r} corrupted={args.corrupted!r} steps={p.n_steps} "
          f"metric=logit diff at output position {pos} (clean {p.clean_metric(metric):.3f}, "
          f"corrupted {p.corrupted_metric(metric):.3f})")

    get_act_patch_resid_pre(p, metric, steps=[0], layers=[0], positions=[0], batch_size=1)  # warm-up
    attribution_patch(p, metric, "blocks.0.hook_resid_pre", steps=[0])  # warm-up (its bridge level)
    batched, t_batched = best_of(lambda: get_act_patch_resid_pre(p, metric, batch_size=args.batch_size), args.repeats)
    cells = torch.isfinite(batched).nonzero().tolist()  # [step, layer, pos] of every patch
    pick = torch.randperm(len(cells), generator=torch.Generator().manual_seed(args.seed))[:args.looped_patches]
    sample = [cells[i] for i in sorted(pick.tolist())]
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(batched.shape[1])]
    t0 = time.perf_counter()
    looped = p.run_patches([Site(names[layer], s, q) for s, layer, q in sample], metric, batch_size=1)
    t_looped = (time.perf_counter() - t0) * len(cells) / len(sample)  # one generate per patch costs the same anywhere
    at = tuple(torch.tensor(sample).T)
    looped_diff = float((batched[at] - looped).abs().max())
    noise = max(looped_diff, p.rounding_noise(metric, "blocks.*.hook_resid_pre", n=args.looped_patches,
                                              seed=args.seed, batch_size=args.batch_size))
    print(f"exact sweep [step, layer, pos] = {list(batched.shape)} ({len(cells)} patches): "
          f"batched {t_batched:.2f} s, one generate per patch {t_looped:.2f} s"
          + (f" (extrapolated from {len(sample)} random patches)" if len(sample) < len(cells) else ""))

    est, t_attr = best_of(lambda: attribution_patch(p, metric, "blocks.*.hook_resid_pre"), args.repeats)
    _, t_run = best_of(lambda: p.run([]), args.repeats)
    exact_effect = batched - p.corrupted_metric(metric)

    def above(factor):  # (cells whose exact effect is above factor x the rounding noise, their rank correlation)
        keep = exact_effect.abs() > factor * noise
        return int(keep.sum()), rank_correlation(torch.where(keep, exact_effect, float("nan")), est)

    n_above, rho = above(RESOLUTION)
    rho_all = rank_correlation(exact_effect, est)
    rho_self = rank_correlation(exact_effect[at], looped - p.corrupted_metric(metric))
    print(f"attribution patching {t_attr:.2f} s for the same grid; one unpatched run {t_run:.2f} s")
    print(f"rounding noise {noise:.2g} (one-ulp nudges, batched vs looped); rank correlation over the cells "
          "above k x noise: " + ", ".join(f"k={k}: {above(k)[1]:.3f} ({above(k)[0]} cells)" for k in (1, 2, 4, 8, 64)))
    top = exact_effect.nan_to_num().abs().flatten().topk(5).indices
    for i in top.tolist():
        s, layer, q = torch.unravel_index(torch.tensor(i), exact_effect.shape)
        print(f"  step {int(s)} layer {int(layer)} pos {int(q)}: exact {float(exact_effect[s, layer, q]):+.3f}  "
              f"attribution {float(est[s, layer, q]):+.3f}")
    print(f"grid_cells: {len(cells)}")
    print(f"batched_sweep_speedup: {t_looped / t_batched:.1f}")
    print(f"batched_sweep_max_abs_diff: {looped_diff:.2g}")
    print(f"exact_sweep_rounding_noise: {noise:.2g}")
    print(f"attribution_cells_compared: {n_above}")
    print(f"attribution_rank_correlation: {rho:.3f}")
    print(f"attribution_rank_correlation_all_cells: {rho_all:.3f}")
    print(f"exact_sweep_self_rank_correlation_looped_cells: {rho_self:.3f}")
    print(f"attribution_speedup: {t_batched / t_attr:.1f}")
    print(f"attribution_speedup_vs_looped: {t_looped / t_attr:.1f}")
    print(f"one_run_speedup_bound: {t_batched / t_run:.1f}")


if __name__ == "__main__":
    main()
