"""Time `capture` against bare `model.generate` and against the captures a user would write by hand.

Rows, timed interleaved in one process (the order rotates every repetition), medians over `--reps`:

  generate (bare)      `model.generate` after `torch.manual_seed(0)`
  forward hooks        `register_forward_hook` on every HF decoder layer, output copied at each call
                       (one call per denoising step) around `model.generate`: the reference tensors
  nnsight (hand)       nnsight 0.8.1 `NNsight` over a copy of the model (nnsight installs a permanent
                       forward wrapper on every module it wraps; a copy keeps the bare row clean),
                       `trace(..., fn=model.generate)` with `tracer.all()` saving every layer's
                       output at every step
  capture tl           `dgt_interp.capture(..., names="blocks.*.hook_resid_post")`, backend "tl"
  capture nnsight      the same with `backend="nnsight"`

Every capture is checked first: the same tensors as the forward hooks at every step and layer, and
`traj.sequences == generate(...).sequences`. Then the same rows on a random-init model of a larger
size (`--hidden`, `--layers`, steps capped by `--large-steps`), and one patched run:
`Patching(...).run_patches(...)` of `--batch` patched copies in one `generate` against a bare
`generate` of the same batch size (also per denoising step, in case the two take different steps).

    .venv/bin/python bench/capture_overhead.py [--reps 15] [--batch 16] [--threads 1] [--hidden 512 --layers 8]

Ratios are medians over repetitions of (row / bare generate timed in the same repetition), wall
time; the CPU-time column (this process only) is less sensitive to other jobs on a shared machine.
Ends with `name: value` lines (ratios to bare generate; `capture_vs_nnsight_hand` = capture tl /
nnsight hand).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch


def decoder_layers(model):
    """The HF decoder layers of a DiffusionGemma model (the bidirectional denoiser: one call per step)."""
    return list(model.model.decoder.layers)


def hooked_generate(model, ids, mask, **gen):
    """Hand-written forward-hook capture: `[step, layer, batch, pos, d]` and the sequences."""
    outs = [[] for _ in decoder_layers(model)]

    def keep(i):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            outs[i].append(hidden.detach().to("cpu", copy=True))

        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(decoder_layers(model))]
    try:
        torch.manual_seed(0)
        seqs = model.generate(input_ids=ids, attention_mask=mask, **gen).sequences
    finally:
        for h in handles:
            h.remove()
    return torch.stack([torch.stack(o) for o in outs], 1), seqs


def nnsight_generate(wrapped, hf, ids, mask, **gen):
    """Hand-written nnsight capture: every decoder layer's output at every step, `[step, layer, batch, pos, d]`."""
    layers = wrapped.model.decoder.layers
    outs = [[] for _ in decoder_layers(hf)]
    torch.manual_seed(0)
    with warnings.catch_warnings():  # "never reached": how an open tracer.all() loop ends, by design
        warnings.simplefilter("ignore", UserWarning)
        with wrapped.trace(ids, attention_mask=mask, fn=hf.generate, **gen) as tracer:
            for _ in tracer.all():
                for i in range(len(outs)):
                    outs[i].append(layers[i].output)
    return torch.stack([torch.stack(o) for o in outs], 1)


def time_rows(rows: dict, reps: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall times, CPU times of this process) per row, interleaved; the order rotates each repetition."""
    names = list(rows)
    wall, cpu = {n: [] for n in names}, {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names):] + names[:r % len(names)]:
            c0, t0 = time.process_time(), time.perf_counter()
            rows[n]()
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    return wall, cpu


def paired_ratio(times: dict[str, list[float]], row: str, base: str) -> float:
    """Median over repetitions of row / base timed in the same repetition (slow drifts of the
    machine's load cancel)."""
    return statistics.median(a / b for a, b in zip(times[row], times[base]))


def compare(model, ids, mask, reps: int, label: str, **gen) -> dict[str, float]:
    """Check every capture against the forward hooks, time all rows; ratios to bare generate."""
    from nnsight import NNsight

    from dgt_interp import capture

    names = "blocks.*.hook_resid_post"
    hand_copy = copy.deepcopy(model)  # nnsight wraps its modules for good
    wrapped = NNsight(hand_copy)

    def bare():
        torch.manual_seed(0)
        return model.generate(input_ids=ids, attention_mask=mask, **gen)

    ref, seqs = hooked_generate(model, ids, mask, **gen)
    assert torch.equal(seqs, bare().sequences)
    hand = nnsight_generate(wrapped, hand_copy, ids, mask, **gen)
    assert torch.equal(hand, ref), "hand-written nnsight differs from the forward hooks"
    for backend in ("tl", "nnsight"):
        traj = capture(model, ids, attention_mask=mask, seed=0, names=names, backend=backend, **gen)
        assert torch.equal(traj.sequences, seqs), f"capture ({backend}) diverged from generate"
        assert torch.equal(traj.stack(names), ref), f"capture ({backend}) differs from the hooks"
    rows = {
        "generate (bare)": bare,
        "forward hooks": lambda: hooked_generate(model, ids, mask, **gen),
        "nnsight (hand)": lambda: nnsight_generate(wrapped, hand_copy, ids, mask, **gen),
        "capture tl": lambda: capture(model, ids, attention_mask=mask, seed=0, names=names, **gen),
        "capture nnsight": lambda: capture(model, ids, attention_mask=mask, seed=0, names=names, backend="nnsight",
                                           **gen),
    }
    wall, cpu = time_rows(rows, reps)
    base = "generate (bare)"
    print(f"{label}: {ref.shape[0]} denoising steps x {ref.shape[1]} layers, batch {ids.shape[0]}; "
          f"{reps} interleaved repetitions")
    print(f"  {'':18}{'median s':>10}{'min s':>9}{'x bare':>8}{'cpu x bare':>12}")
    for n, t in wall.items():
        print(f"  {n:18}{statistics.median(t):>10.4f}{min(t):>9.4f}{paired_ratio(wall, n, base):>8.3f}"
              f"{paired_ratio(cpu, n, base):>12.3f}")
    return {n: paired_ratio(wall, n, base) for n in wall} | {
        "capture_vs_nnsight_hand": paired_ratio(wall, "capture tl", "nnsight (hand)"),
        "capture_nnsight_vs_nnsight_hand": paired_ratio(wall, "capture nnsight", "nnsight (hand)")}


def patched_run(model, tok, reps: int, batch: int) -> tuple[float, float]:
    """(patched run / bare generate, the same per denoising step) at batch `batch` on `model`.

    The patches copy activations of the clean run into a run of the same prompt: every patch is
    applied (hooks fire, the site's slice is written) but no value changes, so the patched copies
    denoise for as many steps as the unpatched run; a real patch may add steps, which is a
    different run, not overhead."""
    from dgt_interp import prompt_batch
    from dgt_interp.patching import LogitDiff, Patching, Site

    ids1 = prompt_batch(["4721+3356="], tok)["input_ids"]
    p = Patching(model, ids1, ids1, seed=0)
    n = ids1.shape[1]
    out = p.corrupted.sequences[0, n:]
    metric = LogitDiff(pos=0, correct=int(out[0]), wrong=int(out[1]))
    layers = model.config.get_text_config().num_hidden_layers
    canvas = model.config.canvas_length
    sites = [Site(f"blocks.{i % layers}.hook_resid_pre", i % p.n_steps, (i // layers) % canvas) for i in range(batch)]
    ids = ids1.repeat(batch, 1)
    steps = []
    count = model.model.decoder.register_forward_pre_hook(lambda *a: steps.append(1))
    try:
        torch.manual_seed(0)
        model.generate(input_ids=ids)
    finally:
        count.remove()
    bare_steps = len(steps)
    (_, _, traj), = list(p.iter_runs(sites, batch_size=batch))
    patched_steps = traj.n_steps
    assert patched_steps == p.corrupted.n_steps, "a value-preserving patch changed the run"

    def bare():
        torch.manual_seed(0)
        return model.generate(input_ids=ids)

    wall, _ = time_rows({"bare": bare, "patched": lambda: p.run_patches(sites, metric, batch_size=batch)}, reps)
    tb, tp = statistics.median(wall["bare"]), statistics.median(wall["patched"])
    ratio = paired_ratio(wall, "patched", "bare")
    print(f"patched run: {batch} patched copies of a {n}-token prompt in one generate ({patched_steps} steps, "
          f"logits recorded, replayed noise) vs bare generate of batch {batch} ({bare_steps} steps): "
          f"{tp:.4f} s vs {tb:.4f} s (median of {reps}), {ratio:.3f}x")
    return ratio, ratio * bare_steps / patched_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=512, help="hidden size of the larger random-init model")
    ap.add_argument("--layers", type=int, default=8, help="layers of the larger random-init model")
    ap.add_argument("--large-steps", type=int, default=8, help="max_denoising_steps on the larger model")
    ap.add_argument("--large-reps", type=int, default=9, help="repetitions on the larger model")
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args()
    if min(args.reps, args.large_reps, args.batch) < 1:
        ap.error("--reps, --large-reps and --batch must be >= 1")
    torch.set_num_threads(args.threads)

    import dgt_interp
    from dgt_interp import zoo
    from dgt_interp.models import TinySize, build_diffusion, load_model

    if "addition-diffusion" in zoo.names():
        name, model = "addition-diffusion", load_model("addition-diffusion")
    else:
        name = "random-init"
        print("note: no zoo diffusion model shipped; timing a random-init model of the zoo's size")
        model = build_diffusion(seed=0)
    tok = dgt_interp.load_tokenizer(model)
    prompts = [f"{(37 * i) % 1000}+{(91 * i) % 1000}=" for i in range(args.batch)]
    batch = dgt_interp.prompt_batch(prompts, tok)
    zoo_ratios = compare(model, batch["input_ids"], batch["attention_mask"], args.reps, f"model {name}")
    patched, patched_per_step = patched_run(model, tok, args.reps, args.batch)

    large = None
    if not args.skip_large:
        h = args.hidden
        size = TinySize(hidden_size=h, num_hidden_layers=args.layers, intermediate_size=2 * h,
                        moe_intermediate_size=h // 2, num_attention_heads=max(1, h // 64),
                        num_key_value_heads=max(1, h // 128), head_dim=64)
        big = build_diffusion(size, seed=0)
        big_batch = dgt_interp.prompt_batch(prompts, dgt_interp.load_tokenizer(big))
        n_params = sum(p.numel() for p in big.parameters())
        large = compare(big, big_batch["input_ids"], big_batch["attention_mask"], args.large_reps,
                        f"random-init hidden {h} x {args.layers} layers ({n_params / 1e6:.1f}M parameters)",
                        max_denoising_steps=args.large_steps)

    print(f"capture_overhead: {zoo_ratios['capture tl']:.3f}")
    print(f"capture_overhead_nnsight: {zoo_ratios['capture nnsight']:.3f}")
    print(f"capture_vs_nnsight_hand: {zoo_ratios['capture_vs_nnsight_hand']:.3f}")
    print(f"forward_hooks_overhead: {zoo_ratios['forward hooks']:.3f}")
    print(f"nnsight_hand_overhead: {zoo_ratios['nnsight (hand)']:.3f}")
    print(f"capture_nnsight_vs_nnsight_hand: {zoo_ratios['capture_nnsight_vs_nnsight_hand']:.3f}")
    if large is not None:
        print(f"capture_overhead_large: {large['capture tl']:.3f}")
        print(f"capture_overhead_nnsight_large: {large['capture nnsight']:.3f}")
        print(f"capture_vs_nnsight_hand_large: {large['capture_vs_nnsight_hand']:.3f}")
        print(f"forward_hooks_overhead_large: {large['forward hooks']:.3f}")
        print(f"nnsight_hand_overhead_large: {large['nnsight (hand)']:.3f}")
    print(f"patched_run_overhead: {patched:.3f}")
    print(f"patched_run_overhead_per_step: {patched_per_step:.3f}")


if __name__ == "__main__":
    main()
