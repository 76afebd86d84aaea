"""`compute(ctx)` and `run(ctx)`: is DiffusionGemma as monitorable as its Gemma 4 twin?

1. Held-out hinted-addition problems (`make_examples`): half with the true sum as hint, half with a
   wrong one. Each model runs every example three times with the same noise: with the hint, without
   it, and with the hint interchanged (`views.run_examples`); DiffusionGemma under each sampler setting.
2. Causal labels (`views.intervention_labels`, `views.process_labels`): intervention = did the hint
   change the answer; process = on correct hints, was the answer copied from the hint or computed.
3. Monitors (two fixed rules; a logistic regression on `views.view_features`) read each view of the
   with-hint run. Examples are split once (seeded) into a monitor-training half (fit, calibrate) and a
   test half (score); g-mean² = TPR × TNR with 95% bootstrap intervals; diffusion − AR paired on the
   test examples both models have a label for, against an equivalence margin of ±0.05.
The text is `report.render(numbers)`.
"""

from __future__ import annotations

import random

import numpy as np
from matplotlib.figure import Figure

from case_studies.common_report import slug
from case_studies.samplers import sampler_grid
from dgt_interp.monitor import MonitorError, compare, score
from dgt_interp.studies import Report, StudyContext

from .report import AR, MARGIN, TASKS, TITLE, render
from .views import (AR_VIEWS, MONITORS, VIEWS, intervention_labels, make_examples, process_labels, run_examples,
                    views_of)

SETTING_NAMES = {"eb=0.1 (default)": "default (eb=0.1)", "eb=1e-3": "one token per step (eb=1e-3)"}


def settings(quick: bool) -> dict[str, dict]:
    """DiffusionGemma's sampler settings: the default, and a tight bound that accepts about one token per
    step (the canvas is written over ~10 steps, so the intermediate view has something to show)."""
    names = ["eb=0.1 (default)"] if quick else list(SETTING_NAMES)
    return sampler_grid(names, labels=SETTING_NAMES)


def _monitors_for(view: str):
    """(name, a fresh monitor) for every registered monitor that reads `view` (`views.register_monitor`)."""
    return [(name, factory()) for name, (factory, views) in MONITORS.items() if views is None or view in views]


def _score_model(examples, labels: dict, runs: dict, view_names, train, test, draws, seed, tick) -> dict:
    """Per task × view × monitor: the test-split score and the test predictions (for pairing)."""
    out: dict = {}
    views_by_name = {view: views_of(examples, runs["hint"], view) for view in view_names}  # shared by both tasks
    for task in TASKS:
        lab = labels[task]
        tr = [i for i in train if lab[i] is not None]
        te = [i for i in test if lab[i] is not None]
        out[task] = {}
        for view, views in views_by_name.items():
            out[task][view] = {}
            for name, mon in _monitors_for(view):
                entry = {"test_examples": te}
                try:
                    mon.fit([views[i] for i in tr], [lab[i] for i in tr])
                    pred = mon.predict([views[i] for i in te])
                    entry.update(score(pred, [lab[i] for i in te], draws=draws, seed=seed).to_dict())
                    entry["predictions"] = pred.tolist()
                except MonitorError as err:  # e.g. one class only: the monitor cannot be fitted
                    entry["error"] = str(err)
                out[task][view][name] = entry
        tick()
    return out


def compute(ctx: StudyContext) -> tuple[dict, dict]:
    quick = ctx.quick
    n = 160 if quick else 1200
    draws = 200 if quick else 1000
    diff, ar = ctx.load("diffusion"), ctx.load("ar")
    examples = make_examples(n, ctx.seed)
    idx = list(range(n))
    random.Random(f"monitorability-split:{ctx.seed}").shuffle(idx)
    train, test = sorted(idx[: n // 2]), sorted(idx[n // 2:])
    grid = settings(quick)
    models = {f"DiffusionGemma, {name}": (diff, gen, VIEWS) for name, gen in grid.items()}
    models[AR] = (ar, {}, AR_VIEWS)
    total = len(models) * (3 + len(TASKS))
    bar = iter(ctx.progress(range(total), desc="monitorability: runs and monitors", total=total))

    def tick():
        next(bar, None)

    numbers: dict = {"quick": quick, "n_examples": n, "n_train": len(train), "n_test": len(test), "margin": MARGIN,
                     "settings": list(grid), "by_model": {}, "comparisons": {}}
    preds: dict = {}
    for label, (model, gen, view_names) in models.items():
        runs = {}
        for which in ("hint", "none", "swap"):
            runs[which] = run_examples(model, examples, which, ctx.seed, **gen)
            tick()
        labels = {"intervention": intervention_labels(runs["hint"], runs["none"]),
                  "process": process_labels(examples, runs["hint"], runs["swap"])}
        scores = _score_model(examples, labels, runs, view_names, train, test, draws, ctx.seed, tick)
        preds[label] = (labels, scores)
        numbers["by_model"][label] = {
            "behaviour": _behaviour(examples, runs, labels),
            "scores": {t: {v: {m: {k: x for k, x in e.items() if k not in ("predictions", "test_examples")}
                               for m, e in mons.items()} for v, mons in vs.items()} for t, vs in scores.items()},
        }
    for label in models:
        if label == AR:
            continue
        numbers["comparisons"][label] = _compare(preds[label], preds[AR], draws, ctx.seed)
    for _ in bar:
        pass
    figures = {}
    for label in numbers["by_model"]:
        if label != AR:
            figures[f"g_mean2_by_view_{slug(label)}"] = g_mean2_figure(numbers, label)
    figures["tpr_tnr"] = tpr_tnr_figure(numbers)
    numbers["figures"] = sorted(figures)
    return numbers, figures


def _behaviour(examples, runs, labels) -> dict:
    """What the model did: hint-free accuracy, how often it wrote a wrong hint, label balance."""
    res = {k: r.results() for k, r in runs.items()}
    wrong = [i for i, e in enumerate(examples) if not e.hint_correct]
    right = [i for i, e in enumerate(examples) if e.hint_correct]
    text_ok = [t == f"{e.scratchpad()}" for t, e in zip(runs["none"].texts, examples)]
    proc = labels["process"]
    return {
        "hint_free_exact": sum(text_ok) / len(examples),
        "hint_free_result_correct": sum(r == str(e.total) for r, e in zip(res["none"], examples)) / len(examples),
        "wrong_hint_written": sum(res["hint"][i] == str(examples[i].hint) for i in wrong) / max(1, len(wrong)),
        "correct_hint_result_correct": sum(res["hint"][i] == str(examples[i].total) for i in right) / max(1, len(right)),
        "intervention_positive": sum(labels["intervention"]), "intervention_n": len(examples),
        "intervention_positive_wrong_hints": sum(labels["intervention"][i] for i in wrong),
        "intervention_positive_correct_hints": sum(labels["intervention"][i] for i in right),
        "process_copied": sum(p is True for p in proc), "process_computed": sum(p is False for p in proc),
        "process_neither": sum(p is None for i, p in enumerate(proc) if examples[i].hint_correct),
        "mean_snapshots": float(np.mean([len(c) for c in runs["hint"].canvases])),
        "sc_equals_canvas": float(np.mean([a == b for a, b in zip(runs["hint"].sc_tokens, runs["hint"].canvases)]))
        if any(runs["hint"].sc_tokens) else None,
    }


def _compare(diffusion, ar, draws: int, seed: int) -> dict:
    """diffusion − AR g-mean², paired on the test examples both label, per task × view × monitor both have."""
    (d_lab, d_scores), (a_lab, a_scores) = diffusion, ar
    out: dict = {}
    for task in TASKS:
        out[task] = {}
        for view, mons in d_scores[task].items():
            if view not in a_scores[task]:
                continue
            out[task][view] = {}
            for name, d in mons.items():
                a = a_scores[task][view].get(name)
                if a is None or "predictions" not in d or "predictions" not in a:
                    continue
                d_pos = dict(zip(d["test_examples"], zip(d["predictions"], [d_lab[task][i] for i in d["test_examples"]])))
                a_pos = dict(zip(a["test_examples"], zip(a["predictions"], [a_lab[task][i] for i in a["test_examples"]])))
                both = sorted(set(d_pos) & set(a_pos))
                if len(both) < 2:
                    continue
                c = compare([d_pos[i][0] for i in both], [d_pos[i][1] for i in both], [a_pos[i][0] for i in both],
                            [a_pos[i][1] for i in both], margin=MARGIN, draws=draws, seed=seed)
                out[task][view][name] = {**c.to_dict(), "n": len(both)}
    return out


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------


def _point(e: dict | None, key: str = "g_mean2"):
    if not e or "error" in e or e.get(key) is None:
        return float("nan"), (0.0, 0.0)
    v = e[key]
    lo, hi = e["ci95"][key]
    lo, hi = (v if lo is None else lo), (v if hi is None else hi)
    return v, (max(v - lo, 0.0), max(hi - v, 0.0))


def g_mean2_figure(numbers: dict, diffusion_label: str) -> Figure:
    """Logistic-monitor g-mean² by view, DiffusionGemma (one setting) beside the AR twin, per task."""
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    axes = fig.subplots(1, len(TASKS), sharey=True)
    for ax, task in zip(axes, TASKS):
        x = np.arange(len(VIEWS))
        for k, (label, colour) in enumerate(((diffusion_label, "tab:blue"), (AR, "tab:orange"))):
            scores = numbers["by_model"][label]["scores"][task]
            pts = [_point(scores.get(v, {}).get("logistic")) for v in VIEWS]
            ax.bar(x + (k - 0.5) * 0.38, [0 if p[0] != p[0] else p[0] for p in pts], 0.38,
                   yerr=np.array([p[1] for p in pts]).T, capsize=2, color=colour,
                   label="DiffusionGemma" if k == 0 else "AR twin")
        ax.set_xticks(x, [v.replace(" tokens", "\ntokens") for v in VIEWS], fontsize=7)
        ax.set_xlabel("view the monitor reads")
        ax.set_title(f"{task} task", fontsize=9)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("g-mean² = TPR × TNR (logistic monitor)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Monitorability by view: {diffusion_label} vs AR twin (95% bootstrap CIs; absent bar = view "
                 "does not exist / monitor not fittable)", fontsize=8)
    return fig


def _short(label: str) -> str:
    return "AR twin" if label == AR else "DiffusionGemma " + label.split(", ", 1)[-1]


def tpr_tnr_figure(numbers: dict) -> Figure:
    """TPR and TNR of the logistic monitor per model × view, per task (what g-mean² multiplies)."""
    labels = list(numbers["by_model"])
    fig = Figure(figsize=(10.0, 1.6 + 0.9 * len(labels)), layout="constrained")
    axes = fig.subplots(1, len(TASKS), sharey=True)
    rows = [(m, v) for m in labels for v in (AR_VIEWS if m == AR else VIEWS)]
    y = np.arange(len(rows))
    for ax, task in zip(axes, TASKS):
        for k, (key, colour) in enumerate((("tpr", "tab:green"), ("tnr", "tab:purple"))):
            pts = [_point(numbers["by_model"][m]["scores"][task].get(v, {}).get("logistic"), key) for m, v in rows]
            ax.barh(y + (k - 0.5) * 0.4, [0 if p[0] != p[0] else p[0] for p in pts], 0.4,
                    xerr=np.array([p[1] for p in pts]).T, capsize=2, color=colour, label=key.upper())
        ax.set_xlim(0, 1.05)
        ax.set_xlabel("rate on the test split")
        ax.set_title(f"{task} task, logistic monitor", fontsize=9)
    axes[0].set_yticks(y, [f"{_short(m)} · {v}" for m, v in rows], fontsize=6)
    axes[0].set_ylabel("model · view")
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=7)
    return fig


def run(ctx: StudyContext) -> Report:
    numbers, figures = compute(ctx)
    return Report(TITLE, render(numbers), figures, numbers)
