"""Time `capture` recording `blocks.*.hook_resid_post` at every step against bare `model.generate`.

Side by side in one process on a zoo model (a random-init model of the zoo's size if none is shipped
yet, with a note), interleaved repetitions, medians. Ends with `capture_overhead: <ratio>`.

    .venv/bin/python bench/capture_overhead.py [--reps 9] [--batch 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dgt_interp import capture, zoo
    from dgt_interp.evaluate import prompt_batch
    from dgt_interp.models import build_diffusion, load_model

    shipped = [n for n in zoo.names() if n.endswith("-diffusion")]
    if shipped:
        name = shipped[0]
        model = load_model(name)
    else:
        name = "random-init (no zoo diffusion model shipped yet)"
        print("note: no zoo diffusion model shipped yet; timing a random-init model of the zoo's size")
        model = build_diffusion(seed=0)
    prompts = [f"{(37 * i) % 1000}+{(91 * i) % 1000}=" for i in range(args.batch)]
    if "sort" in name:
        prompts = [f"{(9137 * (i + 1)) % 100000:05d}" for i in range(args.batch)]
    try:
        batch = prompt_batch(prompts)
    except ValueError:
        batch = prompt_batch(["12+34="] * args.batch)
    ids, mask = batch["input_ids"], batch["attention_mask"]

    def bare():
        torch.manual_seed(0)
        return model.generate(input_ids=ids, attention_mask=mask)

    def captured():
        return capture(model, ids, attention_mask=mask, seed=0, names="blocks.*.hook_resid_post")

    ref = bare().sequences
    traj = captured()  # warm-up: builds the bridged twin once per model
    assert torch.equal(traj.sequences, ref), "capture diverged from generate"
    t_bare, t_cap = [], []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        bare()
        t_bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        captured()
        t_cap.append(time.perf_counter() - t0)
    mb, mc = statistics.median(t_bare), statistics.median(t_cap)
    print(f"model: {name}; batch {args.batch}; {traj.n_steps} denoising steps; "
          f"{len(traj.names)} names recorded at every step ({traj.nbytes / 2**20:.2f} MiB)")
    print(f"{'':24}{'median s':>10}{'min s':>10}")
    print(f"{'generate (bare)':24}{mb:>10.4f}{min(t_bare):>10.4f}")
    print(f"{'capture resid_post':24}{mc:>10.4f}{min(t_cap):>10.4f}")
    print(f"capture_overhead: {mc / mb:.3f}")


if __name__ == "__main__":
    main()
