"""How long training one zoo model takes on this machine, measured rather than assumed.

Times `steps_timed` optimizer steps of each zoo model's recipe (its architecture, batch size, task and
training mix from `recipe.json`) after a warm-up, then projects the wall time of the whole recipe:
its step count plus those of any parent recipes it continued from (`--init-from`).
Run it on an otherwise idle machine: `.venv/bin/python bench/train_speed.py [--threads 2]`.
"""

from __future__ import annotations

import argparse
import time

import torch

from dgt_interp import zoo
from dgt_interp.models import TinySize, build_ar, build_diffusion
from dgt_interp.tasks import get_task
from dgt_interp.train import TrainConfig, ar_loss, diffusion_loss


def seconds_per_step(recipe: dict, steps_timed: int, warmup: int = 3) -> float:
    tc = recipe["train_config"]
    cfg = TrainConfig(task=tc["task"], kind=tc["kind"], batch_size=tc["batch_size"], mix=tc.get("mix"),
                      size=TinySize(**tc["size"]))
    kind, task = cfg.kind, cfg.task
    model = (build_diffusion if kind == "diffusion" else build_ar)(cfg.size).train()
    loss_fn = diffusion_loss if kind == "diffusion" else ar_loss
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    batches = [get_task(task).problems("train", cfg.batch_size, seed=i, mix=cfg.mix)
               for i in range(warmup + steps_timed)]
    for i, problems in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        loss = loss_fn(model, problems, gen, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps_timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps-timed", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    figures = {}
    for name in zoo.names():
        r = zoo.recipe(name)
        sps = seconds_per_step(r, args.steps_timed)
        steps, parent = 0, r
        while parent:
            steps += parent["train_config"]["steps"]
            parent = parent.get("parent_recipe")
        figures[f"{name}_seconds_per_step"] = round(sps, 3)
        figures[f"{name}_projected_train_minutes"] = round(sps * steps / 60, 1)
        recorded = r.get("total_train_seconds", r["train_seconds"])
        figures[f"{name}_recorded_train_minutes"] = round(recorded / 60, 1)
        print(f"{name}: {sps:.3f} s/step x {steps} steps = {sps * steps / 60:.1f} min "
              f"(recorded while training, other jobs sharing the cores: {recorded / 60:.1f} min)")
    projected = [v for k, v in figures.items() if k.endswith("_projected_train_minutes")]
    figures["max_projected_train_minutes"] = max(projected) if projected else float("nan")
    figures["threads"] = args.threads
    for k, v in figures.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
