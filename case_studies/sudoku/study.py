"""`compute(ctx)` and `run(ctx)`: the sudoku case study (does DiffusionGemma fill a puzzle in constraint-propagation order?).

1. Per sampler setting, on held-out puzzles that need at least two propagation rounds: accuracy,
   the phenomena detectors, and the order in which cells commit against the order propagation fills
   them (`hypothesis.propagation_rounds`): Spearman rho per puzzle of commit step vs round (over the
   blank cells), next to rho vs position (left to right), the mean commit step per round, and how
   often a round-2+ cell commits after a round-1 cell of the same puzzle (concordance); the same
   statistics on the AR twin (greedy), which writes cells left to right: the chronological reference.
2. Intermediate context, causally: resample-ablate each canvas position (input token and
   self-conditioning logits) at the first steps (`canvas_flips`) and compare how often patching an easy (round-1) cell flips a harder (round 2+)
   cell's final digit with the reverse.
Every number in the report is computed here (`compute`); nothing is hard-coded. The text is
`report.render(numbers)`, so a wording change re-renders report.md from report.json
(`dgt_interp.studies.rerender`) without rerunning the models.
"""

from __future__ import annotations

import random

import torch
from matplotlib.figure import Figure

from case_studies.common_report import collect_probes
from case_studies.samplers import sampler_grid
from dgt_interp.evaluate import prompt_batch
from dgt_interp.phenomena import canvas_flips, detect_phenomena
from dgt_interp.stats import bootstrap_interval, spearman
from dgt_interp.studies import Report, StudyContext
from dgt_interp.tasks import EOS_ID, SUDOKU
from dgt_interp.viz import commit_heatmap

from .hypothesis import propagation_rounds
from .report import TITLE, render


def sampler_settings(quick: bool) -> dict[str, dict]:
    """name -> generate kwargs (`case_studies.samplers`): from the default to ever more denoising steps."""
    if quick:
        return sampler_grid(["eb=0.1 (default)", "eb=1e-4"])
    return sampler_grid(["eb=0.1 (default)", "eb=1e-3", "eb=1e-4", "eb=1e-4, T=1.2-1.6"])


def multi_round_puzzles(n: int, seed: int = 0) -> list:
    """`n` held-out puzzles in which propagation needs at least two rounds (so an order is predicted)."""
    out, draw = [], 0
    while len(out) < n:
        for p in SUDOKU.problems("test", 200, seed=seed * 1000 + draw):
            if max(r for r in propagation_rounds(p.prompt) if r is not None) >= 2 and p not in out:
                out.append(p)
                if len(out) == n:
                    break
        draw += 1
    return out


def order_vs_rounds(commit_step: torch.Tensor, problems) -> dict:
    """Commit steps `[B, L]` (a `CommitOrder`'s) against each puzzle's propagation rounds.

    Per puzzle, over its blank cells: rho_round = Spearman(commit step, round), rho_position =
    Spearman(commit step, cell index), each mean with a bootstrap 95% interval over puzzles; concordance = over (round-1 cell, round-2+ cell) pairs, the
    fraction where the harder cell commits later (ties count half), with a bootstrap 95% interval over
    puzzles. Mean commit step per round
    (0 = given cells, copied from the prompt).
    """
    rho_round, rho_pos, conc_num, conc_den, per_puzzle = [], [], 0.0, 0, []
    by_round: dict[int, list[float]] = {}
    for b, prob in enumerate(problems):
        rounds = propagation_rounds(prob.prompt)
        for i, r in enumerate(rounds):
            if r is not None and torch.isfinite(commit_step[b, i]):
                by_round.setdefault(r, []).append(float(commit_step[b, i]))
        blank = [i for i, r in enumerate(rounds) if r and torch.isfinite(commit_step[b, i])]
        k = commit_step[b, blank]
        rho_round.append(spearman(k, torch.tensor([float(rounds[i]) for i in blank])))
        rho_pos.append(spearman(k, torch.tensor(blank, dtype=torch.float)))
        easy = [float(commit_step[b, i]) for i in blank if rounds[i] == 1]
        hard = [float(commit_step[b, i]) for i in blank if rounds[i] >= 2]
        num0, den0 = conc_num, conc_den
        for e in easy:
            for h in hard:
                conc_num += 1.0 if h > e else 0.5 if h == e else 0.0
                conc_den += 1
        if conc_den > den0:
            per_puzzle.append((conc_num - num0, conc_den - den0))

    def mean(xs):
        xs = [x for x in xs if x == x]
        return sum(xs) / len(xs) if xs else float("nan")

    def ci95(xs):  # percentile bootstrap over puzzles of the mean correlation
        return list(bootstrap_interval([x for x in xs if x == x], mean, seed=0))

    def pooled(pairs):  # concordance of a resample of puzzles (pairs pooled)
        den = sum(d for _, d in pairs)
        return sum(n for n, _ in pairs) / den if den else float("nan")

    return {"mean_rho_round": mean(rho_round), "rows_with_rho_round": sum(x == x for x in rho_round),
            "ci95_rho_round": ci95(rho_round), "ci95_rho_position": ci95(rho_pos),
            "fraction_rho_round_positive": mean([float(x > 0) for x in rho_round if x == x]),
            "mean_rho_position": mean(rho_pos), "rows_with_rho_position": sum(x == x for x in rho_pos),
            "concordance": conc_num / conc_den if conc_den else float("nan"), "pairs": conc_den,
            "ci95_concordance": list(bootstrap_interval(per_puzzle, pooled, seed=0)),
            "mean_commit_step_by_round": {r: mean(v) for r, v in sorted(by_round.items())},
            "cells_by_round": {r: len(v) for r, v in sorted(by_round.items())}, "rows": len(problems)}


def easy_hard_flips(flips, problems) -> dict:
    """From `canvas_flips`: how often patching an easy (round-1) cell flips a harder (round 2+) cell's
    final digit, and the reverse, over rows where the patch changed the input."""
    counts = {"easy_on_hard": [0, 0], "hard_on_easy": [0, 0], "easy_on_easy": [0, 0]}
    for b, prob in enumerate(problems):
        rounds = propagation_rounds(prob.prompt)
        for qi, q in enumerate(flips.positions):
            if q >= 16 or not rounds[q]:
                continue
            for p, rp in enumerate(rounds):
                if not rp or p == q:
                    continue
                key = ("easy" if rounds[q] == 1 else "hard") + "_on_" + ("easy" if rp == 1 else "hard")
                if key not in counts:
                    continue
                for k in range(flips.flips.shape[0]):
                    if flips.patched[k, qi, b]:
                        counts[key][0] += int(flips.flips[k, qi, b, p])
                        counts[key][1] += 1
    return {k: {"rate": v[0] / v[1] if v[1] else float("nan"), "n": v[1]} for k, v in counts.items()}


def _round_figure(orders: dict) -> Figure:
    fig = Figure(figsize=(5.5, 3.0), layout="constrained")
    ax = fig.add_subplot()
    for name, o in orders.items():
        rounds = sorted(o["mean_commit_step_by_round"])
        ax.plot(rounds, [o["mean_commit_step_by_round"][r] for r in rounds], marker="o", label=name)
    ax.set_xlabel("propagation round (0 = given)")
    ax.set_ylabel("mean commit step (argmax)")
    ax.set_xticks(sorted({r for o in orders.values() for r in o["mean_commit_step_by_round"]}))
    ax.legend(fontsize=7)
    ax.set_title("cells commit in propagation order?", fontsize=9)
    return fig


def compute(ctx: StudyContext) -> tuple[dict, dict]:
    """The study's numbers (everything `report.render` needs) and figures."""
    quick = ctx.quick
    n = 8 if quick else 32
    n_causal = 4 if quick else 12
    diff = ctx.load("diffusion")
    problems = multi_round_puzzles(n, seed=ctx.seed)
    settings = sampler_settings(quick)
    numbers: dict = {"settings": list(settings), "n_puzzles": n, "n_causal": n_causal, "phenomena": {}, "order": {},
                     "causal": {}}
    figures: dict = {}
    for name in ctx.progress(settings, desc="sampler settings"):
        traj, res = detect_phenomena(diff, problems, seed=ctx.seed, **settings[name])
        order = order_vs_rounds(res["commit_argmax"].commit_step, problems)
        numbers["phenomena"][name] = {k: (v if isinstance(v, float) else v.to_dict()) for k, v in res.items()}
        collect_probes(numbers, name, res)
        numbers["order"][name] = order
        if name == list(settings)[-1]:
            figures["commit_heatmap_example"] = commit_heatmap(traj, batch=0)
            figures["commit_order"] = res["commit_argmax"].figure(f"commit order (argmax), {name}")
    # the AR twin writes cells left to right: the chronological reference for the same statistics
    ar = ctx.load("ar")
    _, res_ar = detect_phenomena(ar, problems, seed=ctx.seed, do_sample=False)
    order_ar = order_vs_rounds(res_ar["commit_argmax"].commit_step, problems)
    numbers["phenomena"]["AR twin (greedy)"] = {k: (v if isinstance(v, float) else v.to_dict()) for k, v in res_ar.items()}
    collect_probes(numbers, "AR twin (greedy)", res_ar)
    numbers["order"]["AR twin (greedy)"] = order_ar
    figures["commit_step_by_round"] = _round_figure(numbers["order"])

    base = problems[:n_causal]
    rng = random.Random(f"sudoku-study:{ctx.seed}")
    source = rng.sample(problems[n_causal:], k=n_causal)  # other puzzles (n >= 2 * n_causal in both modes)
    for name in [list(settings)[0], list(settings)[-1]]:
        flips = canvas_flips(diff, prompt_batch([p.prompt for p in base])["input_ids"],
                             prompt_batch([p.prompt for p in source])["input_ids"], steps=[0, 1, 2],
                             channels=("canvas", "self_cond"), eos_id=EOS_ID, seed=ctx.seed, batch_size=32,
                             **settings[name])
        numbers["causal"][name] = easy_hard_flips(flips, base)
    return numbers, figures


def run(ctx: StudyContext) -> Report:
    numbers, figures = compute(ctx)
    return Report(TITLE, render(numbers), figures, numbers)
