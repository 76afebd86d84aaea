"""Every primitive on the full 30-layer DiffusionGemma 26B-A4B (random init, bf16) on one GPU.

Rows, side by side in one process: bare `generate` (the 48-step default sampler, one prompt,
canvas 256 / 256 new tokens), `capture` of `blocks.*.hook_resid_post` at all 30 layers and all
steps, the logit lens on it, a patching sweep of 30 layers x 16 positions at one step
(`get_act_patch_resid_pre`, after `patch_setup`: the clean and corrupted reference runs), and
attribution patching of the same cells. Each row prints its wall time and peak GPU memory
(`torch.cuda.max_memory_allocated`, reset between rows, weights included) and both as ratios to
bare generate; the run ends with `figure: value` lines. A row that fails prints its error in one
line and the other rows still run.

The model is allocated on the GPU and drawn there in bf16 (`dgt_interp.models.released.random_model`:
no float32 copy of any weight exists), with the released sampler defaults. The sweep
and attribution rows run the sampler for `--patch-steps` denoising steps (default 8): each patched
run is a whole `generate`, and 480 of them at 48 steps do not fit the ~8 minute budget.

Without CUDA it says so and exits 0. `--cpu-smoke` runs every row on CPU with a tiny config of the
same architecture (2 layers, hidden 64, vocabulary 16,384, canvas 16; peak memory prints nan there),
so the script is known to work end to end where there is no GPU.

    .venv/bin/python bench/gpu_full.py                 # on a GPU machine (H200: ~3-5 minutes)
    .venv/bin/python bench/gpu_full.py --cpu-smoke     # anywhere (~35 s on 2 busy cores)
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

SMOKE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
             num_global_key_value_heads=1, head_dim=32, global_head_dim=32, num_experts=4, top_k_experts=2,
             moe_intermediate_size=32, layer_types=["sliding_attention", "full_attention"], vocab_size=16_384)


def build(device: torch.device, smoke: bool, canvas: int, seed: int):
    """The 26B-A4B DiffusionGemma (or the smoke config) in bf16 on `device`, random init, no fp32 copies."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DiffusionGemmaTextConfig

    from dgt_interp.models.build import tiny_vision_config
    from dgt_interp.models.released import BACKBONE_26B_A4B, random_model, released_config, released_generation_config

    if smoke:
        v = SMOKE["vocab_size"]  # the three image ids must lie inside the vocabulary
        config = DiffusionGemmaConfig(text_config=DiffusionGemmaTextConfig(**{**BACKBONE_26B_A4B, **SMOKE}),
                                      vision_config=tiny_vision_config(), image_token_id=v - 3, boi_token_id=v - 2,
                                      eoi_token_id=v - 1)
    else:
        config = released_config("diffusion")
    config.canvas_length = canvas
    model = random_model(DiffusionGemmaForBlockDiffusion, config, seed=seed, device=device).eval()
    floats = {p.dtype for p in model.parameters()}
    assert floats == {torch.bfloat16}, floats
    model.generation_config = released_generation_config("diffusion")
    model.generation_config.max_new_tokens = canvas
    return model


class Rows:
    """Time and peak device memory per row (CUDA: max_memory_allocated, reset before each row)."""

    def __init__(self, device: torch.device):
        self.device, self.rows = device, {}

    def run(self, name: str, fn):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # one failed row must not cost the others' figures (a GPU session is short)
            print(f"  {name:<12} FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
            self.rows[name] = (float("nan"), float("nan"))
            return None
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else float("nan")
        self.rows[name] = (seconds, peak)
        print(f"  {name:<12} {seconds:9.2f} s   peak {peak / 2**30:8.2f} GiB", flush=True)
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="every row on CPU with a tiny config")
    ap.add_argument("--patch-steps", type=int, default=8, help="denoising steps of the sweep and attribution runs")
    ap.add_argument("--batch", type=int, default=8, help="patched runs per generate in the sweep")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("bench/gpu_full.py needs a CUDA GPU (the full 26B-A4B model in bf16 is ~50 GB); none here. "
              "Run with --cpu-smoke to exercise every row on a tiny config.")
        return 0
    torch.set_num_threads(1 if args.cpu_smoke else torch.get_num_threads())
    from dgt_interp import capture
    from dgt_interp.attribution import attribution_patch
    from dgt_interp.lens import LogitLens
    from dgt_interp.patching import LogitDiff, Patching
    from dgt_interp.patching.sweeps import get_act_patch_resid_pre

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    canvas = 16 if args.cpu_smoke else 256
    t0 = time.perf_counter()
    model = build(device, args.cpu_smoke, canvas, args.seed)
    text = model.config.get_text_config()
    n_layers, n_params = text.num_hidden_layers, sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    weights = torch.cuda.memory_allocated() if device.type == "cuda" else float("nan")  # the peaks below include them
    print(f"model: {'smoke config' if args.cpu_smoke else 'DiffusionGemma 26B-A4B'}, {n_layers} layers, "
          f"{n_params / 1e9:.2f} B parameters, bf16 ({weights / 2**30:.1f} GiB), on {where}, "
          f"built in {time.perf_counter() - t0:.1f} s")
    gen = torch.Generator().manual_seed(args.seed)
    clean = torch.randint(3, 1000, (1, args.prompt_len), generator=gen)
    clean[0, 0] = text.bos_token_id or 2
    corrupted = clean.clone()
    corrupted[0, -2] = 1000 + int(clean[0, -2])
    clean, corrupted = clean.to(device), corrupted.to(device)
    model.generate(clean, max_denoising_steps=2)  # warm-up (CUDA context, kernels) outside the timed rows
    rows = Rows(device)
    print(f"rows (prompt {args.prompt_len} tokens, canvas {canvas}, 48-step sampler; sweep/attribution at "
          f"{args.patch_steps} steps):")

    def bare():
        torch.manual_seed(args.seed)
        return model.generate(clean).sequences

    seq = rows.run("generate", bare)
    traj = rows.run("capture", lambda: capture(model, clean, names="blocks.*.hook_resid_post", seed=args.seed))
    if traj is not None:
        print(f"capture equals the model's own generate: {torch.equal(traj.sequences, seq.cpu())}; "
              f"{traj.n_steps} steps")
        rows.run("logit_lens", lambda: LogitLens(model).run(traj, chunk_elements=2**26 if device.type == "cuda"
                                                             else 2**24))
    del traj
    p = rows.run("patch_setup", lambda: Patching(model, clean, corrupted, seed=args.seed,
                                                 max_denoising_steps=args.patch_steps))  # the clean + corrupted runs
    if p is not None:
        n = clean.shape[1]
        good, bad = int(p.clean.sequences[0, n]), int(p.corrupted.sequences[0, n])
        metric = LogitDiff(pos=0, correct=good, wrong=bad if bad != good else (good + 1) % text.vocab_size)
        step = p.n_steps // 2
        positions = list(range(min(16, canvas)))
        grid = rows.run("sweep", lambda: get_act_patch_resid_pre(p, metric, steps=[step], positions=positions,
                                                                 batch_size=args.batch))
        est = rows.run("attribution", lambda: attribution_patch(p, metric, "blocks.*.hook_resid_pre", steps=[step]))
        cells = [int(torch.isfinite(t).sum()) if t is not None else 0 for t in (grid, est)]
        print(f"sweep: {cells[0]} cells ({n_layers} layers x {len(positions)} positions at step {step} of "
              f"{p.n_steps}); attribution: {cells[1]} cells")

    base_t, base_m = rows.rows["generate"]
    print("ratios to bare generate (time, peak memory):")
    for name, (sec, peak) in rows.rows.items():
        print(f"  {name:<12} x{sec / base_t:8.2f}   x{peak / base_m:6.2f}")
    print(f"weights_gib: {weights / 2**30:.3f}")
    for name, (sec, peak) in rows.rows.items():
        print(f"{name}_seconds: {sec:.3f}")
        print(f"{name}_peak_gib: {peak / 2**30:.3f}")
        if name != "generate":
            print(f"{name}_time_ratio: {sec / base_t:.3f}")
            print(f"{name}_memory_ratio: {peak / base_m:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
