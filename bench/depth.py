"""Benchmark: opaque serial depth of the full-size DiffusionGemma 26B-A4B vs Gemma 4 26B-A4B on meta.

Run: .venv/bin/python bench/depth.py [--steps 48 --canvas 256 --prompt-len 256]

Builds both released architectures on the meta device (no weights), traces the passes the composition
needs (DiffusionGemma: step 0 and one later step; Gemma 4: one full forward, the prefill and one decode
pass per key-length bucket) under both rule sets, and prints one `figure_name: value` line per figure.
Wall time depends on what else the machine runs; CPU time (user + system) does not.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dgt_interp.depth import serial_depth  # noqa: E402
from dgt_interp.depth.presets import compare  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--canvas", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)

    mlp = torch.nn.Sequential(torch.nn.Linear(1, 8, bias=False), torch.nn.ReLU(), torch.nn.Linear(8, 8, bias=False),
                              torch.nn.ReLU(), torch.nn.Linear(8, 1, bias=False))
    figures: dict[str, object] = {"depth_reference_mlp": serial_depth(mlp, torch.zeros(1))}

    results = {}
    for rules in ("reference", "corrected"):
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        results[rules] = compare(steps=args.steps, canvas=args.canvas, prompt_len=args.prompt_len, rules=rules)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        for line in results[rules].lines():
            print(line)
        print()
        suffix = "" if rules == "reference" else "_corrected"
        figures[f"depth_preset_seconds{suffix}"] = round(wall, 2)
        figures[f"depth_preset_cpu_seconds{suffix}"] = round(cpu, 2)
    figures["depth_preset_peak_gb"] = round(peak_rss_gb(), 3)
    figures["depth_settings"] = (f"prompt={args.prompt_len} canvas={args.canvas} steps={args.steps} "
                                 "dtype=bfloat16 device=meta")
    for rules, r in results.items():
        suffix = "" if rules == "reference" else "_corrected"
        figures.update({
            f"depth_gemma4_pass{suffix}": r.ar_pass,
            f"depth_gemma4_generation{suffix}": r.ar_generation,
            f"depth_diffusiongemma_step0{suffix}": r.dg_first_step,
            f"depth_diffusiongemma_bottlenecked_step{suffix}": r.dg_step,
            f"depth_diffusiongemma_step_increment{suffix}": r.dg_increment,
            f"depth_diffusiongemma_naive{suffix}": r.dg_naive,
            f"depth_diffusiongemma_bottlenecked{suffix}": r.dg_bottlenecked,
            f"depth_ratio_per_pass{suffix}": round(r.per_pass_ratio, 3),
            f"depth_ratio_naive{suffix}": round(r.naive_ratio, 2),
            f"depth_ratio_bottlenecked{suffix}": round(r.bottlenecked_ratio, 3),
            f"depth_steps_matching_paper_naive{suffix}": round(r.steps_matching_paper, 1),
        })
    for name, value in figures.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
