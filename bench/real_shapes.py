"""Every primitive on a model at the released 26B-A4B shapes: wall time and peak RSS beside bare `generate`.

The realistic model (`dgt_interp.models.released.build_released`): the released DiffusionGemma text
config cut to `--layers` layers (real vocabulary 262,144, hidden 2816, 128 experts top-8, canvas
256), random init, bf16, the BPE test tokenizer, the default 48-step sampler, batch 1. One row per
primitive, run in this order in one process:

    generate        bare `model.generate` (the reference for every ratio)
    capture         `capture` of blocks.*.hook_resid_post at every step
    capture_logits  `capture` with record=("processed_logits",) at 4 chosen steps
    lens            `LogitLens().run` on the capture row's trajectory (top-5 kept)
    patch_setup     `Patching(...)`: the clean and corrupted runs
    patch_stash     the clean re-run that keeps the activations the sweep patches in (once per experiment)
    patch_sweep     a sweep of 1 layer x `--positions` positions x `--sweep-steps` steps (the last ones),
                    `--sweep-batch` patched copies per generate (default 1)
    patch_sweep_8   the same sweep with max_denoising_steps=8 (memory must not grow with steps)
    attribution     `attribution_patch` over every step x layer x position (resid_pre)
    bottleneck      generation with the top-1 token bottleneck on the self-conditioning channel

Peak RSS is per row: the kernel's high-water mark (VmHWM) is reset before each row
(`/proc/self/clear_refs`), so a row's peak is what it needed on top of what was already held (the
model). Targets (issue #12): no row's peak above generate's peak + the bytes of its own outputs +
2 GiB; the 48-step sweep's peak within 10% of the 8-step sweep's; each patched run costing at most
1.2x a bare generate of the same batch size.

    .venv/bin/python bench/real_shapes.py [--layers 2] [--steps 48] [--positions 32] [--sweep-steps 4]
                                          [--rows generate,capture,...] [--threads 2]
    .venv/bin/python bench/real_shapes.py --plan      # the planner's table for the full 30-layer model

On 2 CPU cores one 48-step generate at these shapes takes minutes (the two vocabulary-sized matmuls
of every step dominate); `--steps`, `--positions` and `--rows` cut a run to what the machine allows,
and every figure line names the settings it was measured at.
"""

from __future__ import annotations

import argparse
import os
import re
import time

import torch

GiB = 2**30
ROWS = ("generate", "capture", "capture_logits", "lens", "patch_setup", "patch_sweep", "patch_sweep_8", "attribution",
        "bottleneck")


def _status(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes (Linux /proc)."""
    text = open("/proc/self/status").read()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def reset_peak() -> None:
    """Reset the peak-RSS high-water mark to the current RSS (Linux: `5` to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def tensor_bytes(x) -> int:
    """Bytes of the tensors in a result (a tensor, a Trajectory, a LensResult, nested lists/dicts)."""
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if hasattr(x, "nbytes") and not isinstance(x, (list, tuple, dict)):
        return int(x.nbytes)
    if isinstance(x, dict):
        return sum(tensor_bytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(tensor_bytes(v) for v in x)
    if hasattr(x, "__dict__"):  # e.g. a Patching: its reference trajectories and stashed activations
        return sum(tensor_bytes(v) for v in vars(x).values()
                   if isinstance(v, (torch.Tensor, dict, list, tuple)) or hasattr(v, "nbytes"))
    return 0


class Row:
    def __init__(self, name, seconds, peak, base, outputs, note=""):
        self.name, self.seconds, self.peak, self.base, self.outputs, self.note = name, seconds, peak, base, outputs, note


ON_GPU = {"cuda": False}  # set by main: peaks are then GPU memory (torch.cuda), not host RSS


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc `malloc_trim`), so that a row's "held before" is what
    is still referenced, not what earlier rows freed but the allocator kept (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(name, fn, note=""):
    """Run fn() once: (its result, Row with wall time, peak memory and the bytes of what it returned)."""
    import gc

    gc.collect()
    _trim_heap()
    if ON_GPU["cuda"]:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _status("VmRSS")
        reset_peak()
    t0 = time.perf_counter()
    out = fn()
    if ON_GPU["cuda"]:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if ON_GPU["cuda"] else _status("VmHWM")
    row = Row(name, seconds, peak, base, tensor_bytes(out), note)
    print(f"  {name}: {seconds:.1f} s, peak {'GPU memory' if ON_GPU['cuda'] else 'RSS'} {row.peak / GiB:.2f} GiB "
          f"(held before {base / GiB:.2f}), "
          f"outputs {row.outputs / GiB:.3f} GiB {note}", flush=True)
    return out, row


def plan_table(model, tok, steps: int, k: int = 5) -> None:
    """What the planners say the full 30-layer model needs at `steps` steps, for 1, 8 and 32 prompts.

    The planners run on `model` (the released shapes, fewer layers: every vocabulary-sized term is the
    real one) and the per-layer terms are scaled to the released 30 layers: the resid_post bytes of
    `plan_capture`, and the forward + KV-cache part of `estimate_patching_bytes`. Lens outputs are
    what `LensResult` keeps per (step, layer, batch, position): top-k ids (int64) and probabilities,
    entropy and KL (float32)."""
    from types import SimpleNamespace

    from dgt_interp import prompt_batch
    from dgt_interp.capturing import fmt_bytes, plan_capture
    from dgt_interp.models.released import RELEASED_LAYERS, random_model, released_config
    from dgt_interp.patching import estimate_patching_bytes

    layers = model.config.get_text_config().num_hidden_layers
    scale = RELEASED_LAYERS / layers
    canvas = model.config.canvas_length
    full = random_model(type(model), released_config("diffusion"), device="meta")  # shapes only
    weights = sum(p.numel() for p in full.parameters()) * 2
    print(f"\nplanner, full model ({RELEASED_LAYERS} layers, bf16 weights {fmt_bytes(weights)}), {steps} steps, "
          f"one canvas of {canvas} (per-layer terms scaled from {layers} built layers)")
    print("| prompts | capture resid_post, every layer and step | lens outputs (top-5) | one patched copy "
          "(sweep) | of which step working set |")
    print("|---|---|---|---|---|")
    for batch in (1, 8, 32):
        ids = prompt_batch(["def add(a, b): return a + b"] * batch, tok)["input_ids"]
        plan = plan_capture(model, ids, names="blocks.*.hook_resid_post", max_denoising_steps=steps)
        capture_bytes = plan.activation_bytes * scale + plan.record_bytes
        lens_bytes = steps * RELEASED_LAYERS * batch * canvas * (k * (8 + 4) + 4 + 4)
        stand_in = SimpleNamespace(model=model, ids={"corrupted": ids}, generation_kwargs={"max_denoising_steps": steps})
        est = estimate_patching_bytes(stand_in, record=("final_logits",), hooked=[f"blocks.{layers - 1}.hook_resid_post"])
        parts = dict(est.parts)
        parts["forward + KV cache"] = int(parts["forward + KV cache"] * scale)
        print(f"| {batch} | {fmt_bytes(capture_bytes)} | {fmt_bytes(lens_bytes)} | {fmt_bytes(sum(parts.values()))} | "
              f"{fmt_bytes(parts['step working set'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=None, help="cut the 128 experts to this many (default: all)")
    ap.add_argument("--steps", type=int, default=48, help="max_denoising_steps (the released default: 48)")
    ap.add_argument("--positions", type=int, default=32, help="positions in the patch sweep")
    ap.add_argument("--sweep-steps", type=int, default=4, help="steps in the patch sweep (the last ones)")
    ap.add_argument("--sweep-batch", type=int, default=1,
                    help="patched copies per generate in the sweeps (get_act_patch's batch_size): the memory target "
                         "compares with a batch-1 generate, and every further copy adds one copy's step working set")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all-steps", action="store_true",
                    help="turn the adaptive stop off (confidence_threshold=None) so every run takes all --steps steps "
                         "(the random-init model is confident at once and would stop after a few)")
    ap.add_argument("--plan", action="store_true", help="print the planners' memory table for the full model and stop")
    args = ap.parse_args()
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows_wanted if r not in ROWS]
    if unknown:
        ap.error(f"unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    if "generate" not in rows_wanted:
        rows_wanted.insert(0, "generate")  # every ratio is to it
    torch.set_num_threads(args.threads)
    ON_GPU["cuda"] = torch.device(args.device).type == "cuda"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from dgt_interp import capture, load_tokenizer, prompt_batch
    from dgt_interp.attribution import attribution_patch, estimate_attribution_bytes
    from dgt_interp.capturing import CaptureBudgetError
    from dgt_interp.bottleneck import TopK
    from dgt_interp.lens import LogitLens
    from dgt_interp.models.released import build_released
    from dgt_interp.names import list_names
    from dgt_interp.patching import LogitDiff, Patching, get_act_patch

    t0 = time.perf_counter()
    model = build_released("diffusion", num_layers=args.layers, num_experts=args.experts, seed=args.seed,
                           device=args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: released 26B-A4B shapes, {args.layers} layers, {model.config.text_config.num_experts} experts, "
          f"{n_params / 1e9:.2f}B parameters in {model.dtype}, built in {time.perf_counter() - t0:.0f} s; "
          f"RSS {_status('VmRSS') / GiB:.2f} GiB; {args.threads} threads; max_denoising_steps {args.steps}", flush=True)
    tok = load_tokenizer(model)
    if args.plan:
        plan_table(model, tok, args.steps)
        return
    clean_text, corrupted_text = "def add(a, b): return a + b", "def sub(a, b): return a - b"
    batch = prompt_batch([clean_text], tok)
    corrupted = prompt_batch([corrupted_text], tok)["input_ids"].to(model.device)
    if corrupted.shape != batch["input_ids"].shape:
        raise SystemExit("clean and corrupted prompts tokenize to different lengths; pick another pair")
    ids = batch["input_ids"].to(model.device)
    gen = dict(max_denoising_steps=args.steps, **({"confidence_threshold": None} if args.all_steps else {}))
    results: dict[str, Row] = {}

    def generate():
        torch.manual_seed(args.seed)
        return model.generate(input_ids=ids, **gen)

    _, results["generate"] = measure("generate", generate)
    # Once per model, not per run: the hook-name probe (a 2-step generate at batch 2) and the bridged
    # twins a capture and a patched run use, warmed by one-step runs.
    def warm_up():
        list_names(model, "blocks.*.hook_resid_post")
        capture(model, ids, names="blocks.*.hook_resid_post", seed=args.seed, max_denoising_steps=1)
        return Patching(model, ids, corrupted, seed=args.seed, max_denoising_steps=1)

    measure("warm_up", warm_up, note="(once per model: the name probe and the bridged twins; not a row of the table)")
    traj = None
    if "capture" in rows_wanted or "lens" in rows_wanted:
        traj, results["capture"] = measure("capture", lambda: capture(model, ids, names="blocks.*.hook_resid_post",
                                                                      seed=args.seed, **gen))
    if "capture_logits" in rows_wanted:
        chosen = sorted({0, args.steps // 3, 2 * args.steps // 3, args.steps - 1})
        _, results["capture_logits"] = measure(
            "capture_logits", lambda: capture(model, ids, record=("processed_logits",), steps=chosen, seed=args.seed,
                                              **gen), note=f"(steps {chosen})")
    if "lens" in rows_wanted:
        _, results["lens"] = measure("lens", lambda: LogitLens(model).run(traj, k=5))
    del traj
    p = None
    n_patches = 0
    if any(r in rows_wanted for r in ("patch_setup", "patch_sweep", "attribution")):
        p, results["patch_setup"] = measure("patch_setup", lambda: Patching(model, ids, corrupted, seed=args.seed,
                                                                            **gen))
        answer = p.clean.outputs()[1][0]  # the clean run's emitted tokens: the metric's target at position 0
        wrong = p.corrupted.outputs()[1][0]
        metric = LogitDiff(pos=0, correct=int(answer[0]), wrong=int(wrong[0]) if int(wrong[0]) != int(answer[0])
                           else (int(answer[0]) + 1) % model.config.text_config.vocab_size)
        layer = args.layers - 1
        sweep_steps = list(range(max(0, p.n_steps - args.sweep_steps), p.n_steps))
        positions = list(range(min(args.positions, model.config.canvas_length)))
        n_patches = len(sweep_steps) * len(positions)
        if "patch_sweep" in rows_wanted:
            # the clean re-run that stashes the activations the sweep patches in, timed apart so the sweep row
            # is the patched runs alone (the per-run cost the target is about)
            _, results["patch_stash"] = measure(
                "patch_stash", lambda: p.need([f"blocks.{layer}.hook_resid_post"], sweep_steps),
                note="(the clean re-run keeping the swept layer at the swept steps)")
            _, results["patch_sweep"] = measure(
                "patch_sweep", lambda: get_act_patch(p, f"blocks.{layer}.hook_resid_post", metric, steps=sweep_steps,
                                                     positions=positions, batch_size=args.sweep_batch),
                note=f"(1 layer x {len(positions)} positions x {len(sweep_steps)} steps = {n_patches} patched runs)")
    if "patch_sweep_8" in rows_wanted and args.steps != 8:
        def sweep8():
            p8 = Patching(model, ids, corrupted, seed=args.seed, **{**gen, "max_denoising_steps": 8})
            s8 = list(range(max(0, p8.n_steps - args.sweep_steps), p8.n_steps))
            return get_act_patch(p8, f"blocks.{args.layers - 1}.hook_resid_post", metric, steps=s8,
                                 positions=list(range(min(args.positions, model.config.canvas_length))),
                                 batch_size=args.sweep_batch)

        _, results["patch_sweep_8"] = measure("patch_sweep_8", sweep8, note="(Patching set-up included, 8 steps)")
    refused = None
    if "attribution" in rows_wanted:
        try:
            _, results["attribution"] = measure("attribution", lambda: attribution_patch(p, metric,
                                                                                         "blocks.*.hook_resid_pre"))
        except CaptureBudgetError as err:  # refused before running: the graph of every step does not fit
            refused = estimate_attribution_bytes(p, "blocks.*.hook_resid_pre").total
            print(f"  attribution: refused before running: {err}", flush=True)
    del p
    if "bottleneck" in rows_wanted:
        _, results["bottleneck"] = measure("bottleneck", lambda: capture(model, ids, fwd_hooks=TopK(1).hooks(),
                                                                         seed=args.seed, **gen))

    g = results["generate"]
    print(f"\n{'row':16}{'wall s':>9}{'x generate':>12}{'peak GiB':>10}{'x generate':>12}{'outputs GiB':>13}"
          f"{'excess GiB':>12}{'added GiB':>11}")
    excess, added = {}, {}
    for name, r in results.items():
        excess[name] = (r.peak - g.peak - r.outputs) / GiB
        added[name] = ((r.peak - r.base) - (g.peak - g.base) - r.outputs) / GiB
        print(f"{name:16}{r.seconds:>9.1f}{r.seconds / g.seconds:>12.2f}{r.peak / GiB:>10.2f}{r.peak / g.peak:>12.2f}"
              f"{r.outputs / GiB:>13.3f}{excess[name]:>12.2f}{added[name]:>11.2f}")
    print("(excess: peak - generate's peak - the row's own outputs; target <= 2 GiB. added: what the row raised the "
          "peak by over what it found held, minus what generate raised it by and the row's outputs: the same without "
          "what earlier rows of this process still hold)")
    print(f"settings: layers {args.layers}, steps {args.steps}{' (adaptive stop off)' if args.all_steps else ''}, "
          f"sweep {args.positions} positions x {args.sweep_steps} steps, {args.sweep_batch} copies per generate, "
          f"threads {args.threads}")
    for name, r in results.items():
        print(f"{name}_seconds: {r.seconds:.1f}")
        print(f"{name}_time_ratio: {r.seconds / g.seconds:.3f}")
        print(f"{name}_peak_gib: {r.peak / GiB:.3f}")
    print(f"max_peak_excess_gib: {max(excess.values()):.3f}")
    print(f"max_peak_added_gib: {max(added.values()):.3f}")
    if refused is not None:
        print(f"attribution_refused_estimate_gib: {refused / GiB:.1f}")
    if "patch_sweep" in results:
        per_run = results["patch_sweep"].seconds / max(1, n_patches)
        print(f"patched_run_cost_ratio: {per_run / g.seconds:.3f}")
    if "patch_sweep" in results and "patch_sweep_8" in results:
        print(f"sweep_peak_ratio_{args.steps}_vs_8_steps: {results['patch_sweep'].peak / results['patch_sweep_8'].peak:.3f}")


if __name__ == "__main__":
    main()
