"""Peak memory of a patch sweep at DiffusionGemma's real vocabulary: 8 vs 48 denoising steps.

A random-init DiffusionGemma with the released vocabulary (262,144) and canvas width small enough
for a laptop CPU (hidden 64, 2 layers, canvas 32 by default; the embedding alone is 16.7M
parameters). A random model's logits are near-uniform, so the entropy-bound sampler accepts few
tokens per step and every run goes the full `max_denoising_steps`: the worst case for memory.
Each measurement runs in a fresh subprocess (`measure_sweep`) and reads its peak resident set
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`), so runs cannot inherit each other's peaks; the
model is built inside, and its own footprint is reported separately (`model_rss`: the peak right
after building, before any run).

What is swept: `get_act_patch_resid_pre` over 1 layer x `--positions` positions x 1 step (the
shape of the sweep that passed 15 GB on a 1-layer 26B-shaped model at 48 steps). Target: the
48-step peak within 10% of the 8-step peak (memory that does not grow with the step count).

    .venv/bin/python bench/patch_memory.py [--canvas 32] [--positions 8] [--steps 8 48]

`measure_sweep(...)` is importable (e.g. from a real-shapes bench) and returns a dict of numbers.
Ends with `name: value` lines.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

def peak_rss_bytes() -> int:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_sweep(steps: int, *, canvas: int = 32, positions: int = 8, prompt_len: int = 12, threads: int = 1,
                  max_bytes: int | None = None) -> dict:
    """Build the real-vocabulary model, run one `Patching` and a resid_pre sweep; peak RSS (bytes)."""
    import torch

    torch.set_num_threads(threads)
    from dgt_interp.patching import LogitDiff, Patching, get_act_patch_resid_pre
    from dgt_interp.testing import REAL_VOCAB, real_vocab_model

    model = real_vocab_model(canvas)
    model_rss = peak_rss_bytes()
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(3, REAL_VOCAB - 3, (1, prompt_len), generator=gen)
    corrupted = clean.clone()
    corrupted[0, prompt_len // 2] = (clean[0, prompt_len // 2] + 1) % (REAL_VOCAB - 3)
    kw = {} if max_bytes is None else {"max_bytes": max_bytes}
    p = Patching(model, clean, corrupted, seed=0, max_denoising_steps=steps, **kw)
    after_refs = peak_rss_bytes()
    metric = LogitDiff(pos=0, correct=5, wrong=6)
    grid = get_act_patch_resid_pre(p, metric, layers=[0], steps=[0], positions=slice(0, positions), **kw)
    return {"steps": steps, "steps_run": p.n_steps, "canvas": canvas, "positions": positions,
            "model_rss": model_rss, "after_references": after_refs, "peak_rss": peak_rss_bytes(),
            "finite_cells": int(torch.isfinite(grid).sum())}


def measure_capture(rows: int, *, steps: int = 4, canvas: int = 32, prompt_len: int = 12, threads: int = 1) -> dict:
    """Peak RSS of one corrupted-style run of `rows` rows keeping the output logits (the working set of
    a denoising step at this vocabulary: compare rows to get the bytes per row)."""
    import torch

    torch.set_num_threads(threads)
    from dgt_interp import capture
    from dgt_interp.sampling import ReplayedNoise
    from dgt_interp.testing import REAL_VOCAB, real_vocab_model

    model = real_vocab_model(canvas)
    ids = torch.randint(3, REAL_VOCAB - 3, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    capture(model, ids, max_denoising_steps=2, record=("final_logits",), noise=ReplayedNoise(0))  # warm up
    before = peak_rss_bytes()
    capture(model, ids.repeat(rows, 1), max_denoising_steps=steps, record=("final_logits",), noise=ReplayedNoise(0))
    return {"rows": rows, "before": before, "peak_rss": peak_rss_bytes(),
            "row_logits_bytes": canvas * REAL_VOCAB * 4}


def measure_attribution(steps: int, *, canvas: int = 16, prompt_len: int = 12, threads: int = 1) -> dict:
    """Peak RSS of `attribution_patch` over every step of one layer's resid_pre (the graph spans all steps)."""
    import torch

    torch.set_num_threads(threads)
    from dgt_interp.attribution import attribution_patch
    from dgt_interp.patching import LogitDiff, Patching
    from dgt_interp.testing import REAL_VOCAB, real_vocab_model

    model = real_vocab_model(canvas)
    clean = torch.randint(3, REAL_VOCAB - 3, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    corrupted = clean.clone()
    corrupted[0, 1] += 1
    p = Patching(model, clean, corrupted, seed=0, max_denoising_steps=steps)
    before = peak_rss_bytes()
    attribution_patch(p, LogitDiff(pos=0, correct=5, wrong=6), "blocks.0.hook_resid_pre")
    return {"steps": p.n_steps, "before": before, "peak_rss": peak_rss_bytes(), "row_logits_bytes": canvas * REAL_VOCAB * 4}


def capture_for_lens(steps: int, out_dir: str, *, canvas: int = 32, prompt_len: int = 12, threads: int = 1) -> dict:
    """Capture `blocks.*.hook_resid_post` of 2 prompts at the real vocabulary and save it to `out_dir`."""
    import torch

    torch.set_num_threads(threads)
    from dgt_interp import capture
    from dgt_interp.testing import REAL_VOCAB, real_vocab_model

    model = real_vocab_model(canvas)
    ids = torch.randint(3, REAL_VOCAB - 3, (2, prompt_len), generator=torch.Generator().manual_seed(0))
    traj = capture(model, ids, names="blocks.*.hook_resid_post", max_denoising_steps=steps)
    traj.save(out_dir)
    return {"steps": traj.n_steps}


def measure_lens(steps: int, *, canvas: int = 32, threads: int = 1) -> dict:
    """Peak RSS of `LogitLens.run` (top-k, entropy, KL to final, two targets) over a whole trajectory, captured
    in another process (so the capture's own peak is not this one's)."""
    import tempfile

    import torch

    torch.set_num_threads(threads)
    from dgt_interp.lens import LogitLens
    from dgt_interp.testing import REAL_VOCAB, real_vocab_model
    from dgt_interp.trajectory import Trajectory

    with tempfile.TemporaryDirectory() as tmp:
        measure_in_subprocess(steps, "capture_for_lens", out_dir=f"{tmp}/traj", canvas=canvas)
        model = real_vocab_model(canvas)
        traj = Trajectory.load(f"{tmp}/traj", model).to_memory()
        before = peak_rss_bytes()
        res = LogitLens(model).run(traj, targets=[5, 6])
    return {"steps": traj.n_steps, "entries": int(res.entropy.numel()), "before": before, "peak_rss": peak_rss_bytes(),
            "row_logits_bytes": canvas * REAL_VOCAB * 4}


def measure_in_subprocess(steps: int, fn: str = "measure_sweep", **kw) -> dict:
    """`measure_sweep` (or another `fn` here) in a fresh interpreter (its own peak RSS)."""
    code = (f"import json, sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); "
            f"from patch_memory import {fn}; print(json.dumps({fn}({steps}, **{kw!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pair(fn: str, steps: tuple[int, int], label: str) -> tuple[dict, dict]:
    """`fn` at two step counts, each in a fresh process; prints the peak above what preceded the measured call."""
    out = tuple(measure_in_subprocess(n, fn) for n in steps)
    for r in out:
        print(f"{label} over {r['steps']} steps: peak {r['peak_rss'] / 2**30:.2f} GiB, "
              f"+{(r['peak_rss'] - r['before']) / 2**20:.0f} MiB over what preceded it")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--canvas", type=int, default=32)
    ap.add_argument("--positions", type=int, default=8)
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 48])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--working-set", action="store_true",
                    help="measure the per-row working set of a denoising step instead (rows 1 vs 4)")
    ap.add_argument("--attribution", action="store_true", help="measure attribution's graph per step instead")
    ap.add_argument("--lens", action="store_true", help="measure the logit lens's peak instead")
    args = ap.parse_args()
    if args.attribution:
        lo, hi = _pair("measure_attribution", (2, 4), "attribution")
        per_step = (hi["peak_rss"] - lo["peak_rss"]) / (hi["steps"] - lo["steps"])
        print(f"attribution_graph_logits_per_step: {per_step / lo['row_logits_bytes']:.2f}")
        return
    if args.lens:
        _, hi = _pair("measure_lens", (4, 16), "logit lens")
        print(f"lens_peak_above_capture_mib_{hi['steps']}_steps: {(hi['peak_rss'] - hi['before']) / 2**20:.0f}")
        return
    if args.working_set:
        one, four = (measure_in_subprocess(r, "measure_capture", canvas=args.canvas) for r in (1, 4))
        per_row = (four["peak_rss"] - one["peak_rss"]) / 3
        print(f"per-row peak {per_row / 2**20:.1f} MiB = {per_row / one['row_logits_bytes']:.2f} x [canvas, vocab] float32")
        print(f"step_working_logits: {per_row / one['row_logits_bytes']:.2f}")
        return
    results = [measure_in_subprocess(s, canvas=args.canvas, positions=args.positions, threads=args.threads)
               for s in args.steps]
    gib = 2 ** 30
    for r in results:
        print(f"max_denoising_steps={r['steps']} (ran {r['steps_run']}): model {r['model_rss'] / gib:.2f} GiB, "
              f"after clean+corrupted {r['after_references'] / gib:.2f} GiB, peak {r['peak_rss'] / gib:.2f} GiB "
              f"({r['finite_cells']} cells)")
    lo, hi = results[0], results[-1]
    print(f"peak_rss_{lo['steps']}_steps_gib: {lo['peak_rss'] / gib:.3f}")
    print(f"peak_rss_{hi['steps']}_steps_gib: {hi['peak_rss'] / gib:.3f}")
    print(f"peak_ratio_{hi['steps']}_vs_{lo['steps']}: {hi['peak_rss'] / lo['peak_rss']:.3f}")
    above = (hi['peak_rss'] - hi['model_rss']) / max(1, lo['peak_rss'] - lo['model_rss'])
    print(f"above_model_ratio_{hi['steps']}_vs_{lo['steps']}: {above:.3f}")


if __name__ == "__main__":
    main()
