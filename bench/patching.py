"""Batched vs one-generate-per-patch sweeps, and attribution patching vs the exact sweep, on a zoo model.

Side by side in one process: the `[step, layer, pos]` resid_pre sweep of an addition problem whose
corrupted prompt changes one operand digit, (a) with all patched copies along the batch axis,
(b) one `generate` per patch; then attribution patching of the same grid, and one unpatched run
(the floor of any method that has to run the model once). Everything is warmed up first (bridges,
name probes); the batched sweep, attribution and the single run are timed best of `--repeats`.
Falls back to a random-init model of the zoo's size (with a note) if no zoo diffusion model is
shipped. Ends with one line per figure: `name: value`.

Rank correlation is over the cells whose exact effect is larger than the exact sweep's own float
noise (max |batched - looped|: the same patches, another reduction order); below it the exact
values are rounding, and their order is noise. The all-cells figure and the exact sweep's
correlation with itself (batched vs looped, all cells) are printed too.

    .venv/bin/python bench/patching.py [--clean 1234+5678=] [--corrupted 1234+5978=] [--threads 1]

The default run settles in 2 steps, a 64-cell grid that one batched `generate` covers, so no method
can be much faster than the batched sweep there (see `one_run_speedup_bound`). Attribution's cost
does not grow with the grid; the exact sweep's does. A long run shows that side:

    .venv/bin/python bench/patching.py --entropy-bound 1e-4 --temperature 1.2 1.6 --looped-steps 2
"""

from __future__ import annotations

import argparse
import time

import torch


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
    ap.add_argument("--entropy-bound", type=float, default=None,
                    help="sampler entropy bound (default: the model's); smaller = more denoising steps = a larger grid")
    ap.add_argument("--temperature", type=float, nargs=2, default=None, metavar=("T_MIN", "T_MAX"),
                    help="sampler temperature range; hotter runs use more of the 48 steps (a larger grid)")
    ap.add_argument("--looped-steps", type=int, default=None,
                    help="time one-generate-per-patch on the first K steps only and extrapolate per patch "
                         "(for long runs, where the full loop would take hours)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dgt_interp import zoo
    from dgt_interp.attribution import attribution_patch, rank_correlation
    from dgt_interp.evaluate import prompt_batch
    from dgt_interp.models import build_diffusion, load_model
    from dgt_interp.patching import LogitDiff, Patching, get_act_patch_resid_pre

    if "addition-diffusion" in zoo.names():
        name, model = "addition-diffusion", load_model("addition-diffusion")
    else:
        name = "random-init"
        print("note: no zoo diffusion model shipped yet; timing a random-init model of the zoo's size")
        model = build_diffusion(seed=0)
    clean, corrupted = prompt_batch([args.clean])["input_ids"], prompt_batch([args.corrupted])["input_ids"]
    gen = {}
    if args.entropy_bound is not None:
        from dgt_interp.bottleneck import entropy_bound_kwargs

        gen.update(entropy_bound_kwargs(args.entropy_bound))
    if args.temperature is not None:
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
    k = p.n_steps if args.looped_steps is None else min(args.looped_steps, p.n_steps)
    t0 = time.perf_counter()
    looped = get_act_patch_resid_pre(p, metric, batch_size=1, steps=list(range(k)))
    t_looped = time.perf_counter() - t0
    cells = int(torch.isfinite(batched).sum())
    looped_cells = int(torch.isfinite(looped).sum())
    t_looped *= cells / looped_cells  # per-patch cost is flat: extrapolate when only K steps were looped
    noise = float((batched[:k] - looped).nan_to_num().abs().max())
    print(f"exact sweep [step, layer, pos] = {list(batched.shape)} ({cells} patches): "
          f"batched {t_batched:.2f} s, one generate per patch {t_looped:.2f} s"
          + (f" (extrapolated from the {looped_cells} patches of the first {k} steps)" if k < p.n_steps else ""))

    est, t_attr = best_of(lambda: attribution_patch(p, metric, "blocks.*.hook_resid_pre"), args.repeats)
    _, t_run = best_of(lambda: p.run([]), args.repeats)
    exact_effect = batched - p.corrupted_metric(metric)
    above = exact_effect.abs() > noise
    rho = rank_correlation(torch.where(above, exact_effect, float("nan")), est)
    rho_all = rank_correlation(exact_effect, est)
    rho_self = rank_correlation(exact_effect[:k], looped - p.corrupted_metric(metric))
    print(f"attribution patching {t_attr:.2f} s for the same grid; one unpatched run {t_run:.2f} s; "
          f"{int(above.sum())} cells above the exact sweep's float noise {noise:.2g}")
    top = exact_effect.nan_to_num().abs().flatten().topk(5).indices
    for i in top.tolist():
        s, layer, q = torch.unravel_index(torch.tensor(i), exact_effect.shape)
        print(f"  step {int(s)} layer {int(layer)} pos {int(q)}: exact {float(exact_effect[s, layer, q]):+.3f}  "
              f"attribution {float(est[s, layer, q]):+.3f}")
    print(f"grid_cells: {cells}")
    print(f"batched_sweep_speedup: {t_looped / t_batched:.1f}")
    print(f"batched_sweep_max_abs_diff: {noise:.2g}")
    print(f"attribution_rank_correlation: {rho:.3f}")
    print(f"attribution_rank_correlation_all_cells: {rho_all:.3f}")
    print(f"exact_sweep_self_rank_correlation_all_cells: {rho_self:.3f}")
    print(f"attribution_speedup: {t_batched / t_attr:.1f}")
    print(f"attribution_speedup_vs_looped: {t_looped / t_attr:.1f}")
    print(f"one_run_speedup_bound: {t_batched / t_run:.1f}")


if __name__ == "__main__":
    main()
