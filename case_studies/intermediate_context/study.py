"""`compute(ctx)` and `run(ctx)`: the intermediate-context case study (count task: is the count read off the drafted list?).

1. Records, per sampler setting (`count_common.sampler_settings`) and on the AR twin: accuracy of the
   count and of the whole answer, wrong counts drafted and later corrected (`count_common.count_trace`),
   overwritten drafts (`phenomena.find_drafts`), and whether the count commits after the list
   (`phenomena.commit_order`, per position).
2. Causal sweeps (`phenomena.canvas_flips`): resample-ablate each canvas position at each step from a
   run on another problem; flip rate of the count when a list position is patched (list -> count)
   and the reverse; the effect of each kept draft on the final answer (`phenomena.draft_effects`).
3. IIA of "count := len(drafted list)" (`hypothesis.list_at`): patch the list region's canvas tokens
   and/or self-conditioning logits from a source with another count; does the emitted count follow
   the source's list? Next to the count's own draft (`hypothesis.count_draft_at`), random sites of the
   same shape and the AR twin, per sampler setting.
Every number in the report is computed here (`compute`); nothing is hard-coded. The text is
`report.render(numbers)`, so a wording change re-renders report.md from report.json
(`dgt_interp.studies.rerender`) without rerunning the models.
"""

from __future__ import annotations

import random

import torch

from case_studies.common_report import collect_probes, iia_figure, slug
from case_studies.count_common import (
    COUNT_POS,
    LIST_START,
    count_trace,
    run_prompts,
    sample_problem,
    sampler_settings,
)
from dgt_interp.causal import PairRuns, expected_answers, random_site_baseline
from dgt_interp.evaluate import prompt_batch
from dgt_interp.patching import Patching
from dgt_interp.phenomena import canvas_flips, draft_effects, find_drafts
from dgt_interp.stats import nanmean
from dgt_interp.studies import Report, StudyContext
from dgt_interp.tasks import EOS_ID
from dgt_interp.viz import canvas_figure

from .hypothesis import CHANNELS, STEPS, context_pairs, count_draft_at, list_at
from .report import TITLE, render

COMPARES = ("count", "answer")


def _records(model, problems, seed, **gen) -> dict:
    traj, answers, det = run_prompts(model, problems, seed, **gen)
    co = det["commit_argmax"]  # EOS excluded: the list's own characters
    cs = co.commit_step  # [B, L], NaN outside the answer
    after = [bool(cs[b, COUNT_POS] > torch.nan_to_num(cs[b, LIST_START:], nan=-1).max())
             for b in range(cs.shape[0]) if torch.isfinite(cs[b, LIST_START:]).any()]
    trace = count_trace(traj, problems)
    return {"traj": traj, "detected": det, "accuracy": det["accuracy"],
            "count_accuracy": sum(a[:1] == p.answer[:1] for a, p in zip(answers, problems)) / len(problems),
            "trace": trace, "drafts": det["drafts"], "commit": co,
            "count_commit_step": nanmean(cs[:, COUNT_POS]),
            "list_commit_step": nanmean(cs[:, LIST_START:]),
            "fraction_count_commits_after_list": sum(after) / len(after) if after else float("nan")}


def _record_numbers(r) -> dict:
    return {"accuracy": r["accuracy"], "count_accuracy": r["count_accuracy"], "count_trace": r["trace"].summary(),
            "drafts": r["drafts"].to_dict(), "mean_steps": r["commit"].to_dict()["mean_steps"],
            "count_commit_step": r["count_commit_step"], "list_commit_step": r["list_commit_step"],
            "fraction_count_commits_after_list": r["fraction_count_commits_after_list"]}


def _flips(model, base, src, seed, max_steps, batch_size, **gen):
    """canvas_flips on jointly padded base/source prompts (prompts differ in length); summary + drafts."""
    batch = prompt_batch([p.prompt for p in base] + [p.prompt for p in src])
    n = len(base)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n_steps = Patching(model, ids[n:], ids[:n], seed=seed, attention_mask=mask[n:], corrupted_attention_mask=mask[:n],
                       **gen).n_steps  # steps both runs reach (one canvas)
    flips = canvas_flips(model, ids[:n], ids[n:], steps=list(range(min(n_steps, max_steps))), channels=("canvas",),
                         eos_id=EOS_ID, seed=seed, attention_mask=mask[:n], source_attention_mask=mask[n:],
                         batch_size=batch_size, **gen)
    e = flips.effect()  # [Q, L]: patched q -> flipped p
    eff = draft_effects(find_drafts(flips.base, eos_id=EOS_ID), flips)
    list_drafts = [d for d in eff.per_draft if d["pos"] >= LIST_START]
    summary = {"steps_patched": len(flips.steps), "base_steps": n_steps,
               "list_to_count": nanmean(e[LIST_START:, COUNT_POS]), "count_to_list": nanmean(e[COUNT_POS, LIST_START:]),
               **flips.later_on_earlier(), "drafts": eff.to_dict(),
               "list_drafts_tested": len(list_drafts),
               "list_drafts_whose_ablation_changes_the_count": sum(
                   1 for d in list_drafts if _count_flipped(flips, d)),
               }
    return flips, summary


def _count_flipped(flips, d) -> bool:
    i = flips.steps.index(d["read_at_step"])
    j = flips.positions.index(d["pos"])
    return bool(flips.flips[i, j, d["batch"], COUNT_POS])


def _hypotheses():
    hyps = [list_at(ch, st, c) for ch in CHANNELS for st in STEPS for c in COMPARES]
    hyps += [count_draft_at("both", c) for c in COMPARES]
    return hyps


def _score(runs, hyps):
    """{hypothesis name: IIAResult}, one patched run per distinct site set."""
    keys, site_sets = [], []
    for h in hyps:
        s = h.sites(runs.ctx)
        k = repr(s)
        if k not in keys:
            keys.append(k)
            site_sets.append(s)
    outs = runs.outputs(site_sets, batch_size=32)
    res = {}
    for h in hyps:
        s = h.sites(runs.ctx)
        res[h.name] = runs.score(h.name, s, outs[keys.index(repr(s))], expected_answers(h, runs.pairs), h)
    return res


def compute(ctx: StudyContext) -> tuple[dict, dict]:
    """The study's numbers (everything `report.render` needs) and figures."""
    quick = ctx.quick
    n_rec = 8 if quick else 128
    n_causal = 3 if quick else 32
    n_pairs = 6 if quick else 80
    draws = 2 if quick else 4
    max_flip_steps = 3 if quick else 16
    diff, ar = ctx.load("diffusion"), ctx.load("ar")
    settings = sampler_settings(quick)
    default, slow = list(settings)[0], list(settings)[-1]
    rng = random.Random(f"intermediate-context-study:{ctx.seed}")
    problems = [sample_problem(rng, min_count=0) for _ in range(n_rec)]
    numbers: dict = {"settings": list(settings), "n_record_prompts": n_rec, "n_causal_prompts": n_causal,
                     "n_pairs": n_pairs, "records": {}, "causal": {}, "iia": {}}
    figures: dict = {}

    # 1. records per setting + AR twin
    recs = {}
    for name in ctx.progress(list(settings), desc="records: sampler settings"):
        recs[name] = _records(diff, problems, ctx.seed, **settings[name])
        numbers["records"][name] = _record_numbers(recs[name])
        collect_probes(numbers, name, recs[name]["detected"])
    rec_ar = _records(ar, problems, ctx.seed, do_sample=False)
    numbers["records"]["AR twin (greedy)"] = _record_numbers(rec_ar)
    collect_probes(numbers, "AR twin (greedy)", rec_ar["detected"])
    figures["drafts_slow"] = recs[slow]["drafts"].figure(f"overwritten drafts, {slow}")
    figures["commit_order_slow"] = recs[slow]["commit"].figure(f"commit step per position, {slow}")
    tr = recs[slow]["trace"]
    wrong = ((tr.written != tr.final_count[:, None]) & tr.active).sum(1)
    figures["canvas_example"] = canvas_figure(recs[slow]["traj"], batch=int(wrong.argmax()))

    # 2. causal sweeps: list -> count, drafts -> answer
    base_p = [sample_problem(rng) for _ in range(n_causal)]
    src_p = [sample_problem(rng) for _ in range(n_causal)]
    causal_settings = [default] if quick else [default, slow]
    for name in ctx.progress(causal_settings, desc="canvas patching: sampler settings"):
        flips, summary = _flips(diff, base_p, src_p, ctx.seed, max_flip_steps, 32, **settings[name])
        numbers["causal"][name] = summary
        figures[f"canvas_flips_{slug(name)}"] = flips.figure(f"canvas patch flip rate, {name}")

    # 3. IIA of count := len(drafted list)
    pairs = context_pairs(n_pairs, seed=ctx.seed)
    hyps = _hypotheses()
    headline = list_at("both", "all", "count")
    iia_rows = []
    iia_settings = [default] if quick else [default, slow]
    for name in ctx.progress(iia_settings, desc="IIA: sampler settings"):
        runs = PairRuns(diff, pairs, seed=ctx.seed, **settings[name])
        if not runs.pairs:
            numbers["iia"][name] = {"error": "the model answered no pair correctly unpatched", "dropped": runs.dropped}
            continue
        scores = _score(runs, hyps)
        rnd = random_site_baseline(diff, headline, runs=runs, draws=draws, seed=ctx.seed, batch_size=32)
        numbers["iia"][name] = {"pairs_kept": len(runs.pairs), "dropped": runs.dropped,
                                "hypotheses": {k: v.to_dict() for k, v in scores.items()},
                                "random_sites": rnd.to_dict()}
        for h in hyps:
            if h.compare == "count" or h.name.startswith("list@both:all"):
                iia_rows.append((f"{h.name} [{name}]", scores[h.name]))
        iia_rows.append((f"random sites, {headline.name} [{name}]", rnd))
    runs_ar = PairRuns(ar, pairs, seed=ctx.seed, do_sample=False)
    if runs_ar.pairs:
        ar_hyps = [list_at("both", "all", c) for c in COMPARES] + [count_draft_at("both", c) for c in COMPARES]
        s_ar = _score(runs_ar, ar_hyps)
        rnd_ar = random_site_baseline(ar, headline, runs=runs_ar, draws=draws, seed=ctx.seed, batch_size=32)
        numbers["iia"]["AR twin (greedy)"] = {"pairs_kept": len(runs_ar.pairs), "dropped": runs_ar.dropped,
                                              "hypotheses": {k: v.to_dict() for k, v in s_ar.items()},
                                              "random_sites": rnd_ar.to_dict()}
        iia_rows += [(f"{h.name} AR twin", s_ar[h.name]) for h in ar_hyps]
        iia_rows.append((f"random sites, {headline.name} AR twin", rnd_ar))
    else:
        numbers["iia"]["AR twin (greedy)"] = {"error": "the AR twin answered no pair correctly", "dropped": runs_ar.dropped}
    numbers["iia_rows"] = [(label, r.to_dict()) for label, r in iia_rows]
    if iia_rows:
        figures["iia"] = iia_figure(iia_rows, "count := len(drafted list): IIA (95% Wilson CI)")
    return numbers, figures


def run(ctx: StudyContext) -> Report:
    numbers, figures = compute(ctx)
    return Report(TITLE, render(numbers), figures, numbers)
