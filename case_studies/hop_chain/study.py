"""`compute(ctx)` and `run(ctx)`: the hop-chain case study (non-chronological and intermediate-context reasoning).

1. Records, per sampler setting and on the AR twin (`phenomena.detect_phenomena`): accuracy, the commit
   order of the three answer digits (`phenomena.commit_order` by the argmax canvas, EOS excluded): the
   Spearman rho of commit step against position per row (mean with its bootstrap interval; -1 = right to
   left) and the fraction of rows committing strictly right to left (h1, then h2, then h3), next to a
   random-order baseline (each row's commit steps over its positions in every order, averaged: the same
   steps, no order) and the AR twin. And the step-0 argmax per position: right where one lookup suffices
   (h1), near chance (1/6) where two or three are needed, if one pass cannot chain lookups.
2. Interchange interventions (`dgt_interp.causal`): h1 = f(x) is patched where it is drafted (the canvas
   token at position 2, the self-conditioning logits there, or the residual after block 0) from a source
   problem with another h1, at step 1 or every step (`hypothesis.h1_at`). If h2 is computed from the
   drafted h1, the base emits h2 = f_base(h1_src) (IIA on the digit to the left; `/chain`: h3 h2). Next to
   the same sites at the other canvas positions (position controls), random sites of the same shape and
   the AR twin (on pairs it answers correctly). The step-k -> k+1 reading: after patching the drafted h1
   at step 1, how often the argmax at position 1 *after step 1* is already f_base(h1_src).
Every number in the report is computed here; the text is `report.render(numbers)`.
"""

from __future__ import annotations

import torch

from case_studies.chain_common import correct_pool, iia_entry, random_order, training
from case_studies.chain_common import step_effect as chain_step_effect
from case_studies.common_report import collect_probes, iia_figure, rate, slug
from case_studies.samplers import sampler_grid
from dgt_interp.phenomena import detect_phenomena
from dgt_interp.stats import nanmean
from dgt_interp.studies import Report, StudyContext
from dgt_interp.tasks import HOP_CHAIN, VOCAB
from dgt_interp.tasks.library import HOP_SYMBOLS

from .hypothesis import COMPARES, EOS_POS, H1_POS, H2_POS, H3_POS, HOP_MODEL, HOP_POSITIONS, STEPS, h1_at, hop_pairs
from .report import HEADLINE, TITLE, render

CHANCE = 1 / HOP_SYMBOLS
CAUSAL_CHANNELS = ("canvas", "selfcond", "both", "L0")


def sampler_settings(quick: bool) -> dict[str, dict]:
    """The zoo default (entropy bound 0.1) first, then one that resolves the canvas over more steps."""
    return sampler_grid(["eb=0.1 (default)"] if quick else ["eb=0.1 (default)", "eb=1e-3"])


def _records(model, problems, seed, **gen) -> tuple[object, dict, dict]:
    """(the argmax `CommitOrder`, the record numbers, every probe's results) of one batch of problems."""
    traj, det = detect_phenomena(model, problems, seed=seed, **gen)
    co = det["commit_argmax"]
    cs = co.commit_step[:, :EOS_POS]  # [B, 3]: h3, h2, h1
    done = torch.isfinite(cs).all(1)  # rows whose answer has three digits
    cs = cs[done]
    rtl = [bool(r[H1_POS] < r[H2_POS] < r[H3_POS]) for r in cs]
    at_once = [bool(r.max() == r.min()) for r in cs]
    out = {"accuracy": det["accuracy"], "rows": len(problems), "rows_with_three_digits": int(done.sum()),
           "commit": co.to_dict(),
           "right_to_left": rate(sum(rtl), len(rtl)), "all_at_once": rate(sum(at_once), len(at_once)),
           "random_order": random_order(cs),
           "mean_commit_step": {name: nanmean(cs[:, p]) for name, p in HOP_POSITIONS.items()}}
    if traj.kind == "diffusion":  # the first step's argmax per position: what one forward pass gets right
        first = torch.stack([traj.records["argmax_canvas"][steps[0], b] for b, steps in enumerate(traj.row_steps(0))])
        want = {name: torch.tensor([VOCAB.index(p.answer[pos]) for p in problems]) for name, pos in HOP_POSITIONS.items()}
        out["step0_argmax"] = {name: rate(int((first[:, pos] == want[name]).sum()), len(problems))
                               for name, pos in HOP_POSITIONS.items()}
        # what writing the query x itself at every position would get: f^k(x) = x when x's cycle length divides k
        out["query_copy"] = {name: rate(sum(p.answer[pos] == p.prompt[-2] for p in problems), len(problems))
                             for name, pos in HOP_POSITIONS.items()}
        out["step0_equals_query"] = {name: rate(int((first[:, pos] == torch.tensor(
            [VOCAB.index(p.prompt[-2]) for p in problems])).sum()), len(problems)) for name, pos in HOP_POSITIONS.items()}
    return co, out, det


def step_effect(runs, site_sets, step: int) -> list[dict]:
    """Per site set: how often the argmax at position 1 right after `step` (the step the patch is read at) is
    already the counterfactual h2 = f_base(h1_src), over the kept pairs; [0] the unpatched base."""
    want = torch.tensor([VOCAB.index(str(HOP_MODEL.counterfactual(b, s, ["h1"])[H2_POS])) for b, s in runs.pairs])
    return chain_step_effect(runs, site_sets, step, H2_POS, want)


def _hypotheses() -> list:
    hyps = [h1_at(ch, st, H1_POS, c) for ch in CAUSAL_CHANNELS for st in STEPS for c in COMPARES]
    hyps += [h1_at("both", st, p, "next") for st in STEPS for p in (H3_POS, H2_POS, EOS_POS)]  # position controls
    return hyps


def compute(ctx: StudyContext) -> tuple[dict, dict]:
    """The study's numbers (everything `report.render` needs) and figures."""
    quick = ctx.quick
    n_rec = 16 if quick else 256
    n_pairs = 8 if quick else 128
    n_pool = 32 if quick else 512
    draws = 2 if quick else 8
    diff, ar = ctx.load("diffusion"), ctx.load("ar")
    settings = sampler_settings(quick)
    problems = HOP_CHAIN.problems("test", n_rec, seed=ctx.seed)
    numbers: dict = {"settings": list(settings), "settings_kwargs": {k: {a: repr(b) for a, b in v.items()}
                                                                      for k, v in settings.items()},
                     "canvas_length": int(diff.config.canvas_length), "n_record_prompts": n_rec, "n_pairs": n_pairs,
                     "chance": CHANCE, "records": {}, "iia": {}, "step_effect": {},
                     "training": {kind: training(ctx.models[kind]) for kind in ("diffusion", "ar")}}
    figures: dict = {}

    # 1. records per setting + AR twin
    for name in ctx.progress(list(settings), desc="records: sampler settings"):
        co, numbers["records"][name], det = _records(diff, problems, ctx.seed, **settings[name])
        figures[f"commit_order_{slug(name)}"] = co.figure(f"commit step per position, {name}")
        collect_probes(numbers, name, det)
    _, numbers["records"]["AR twin (greedy)"], det = _records(ar, problems, ctx.seed, do_sample=False)
    collect_probes(numbers, "AR twin (greedy)", det)

    # 2. interchange interventions on h1's draft
    pairs = hop_pairs(n_pairs, seed=ctx.seed)
    hyps = _hypotheses()
    headline = next(h for h in hyps if h.name == HEADLINE)
    controls = [h for h in hyps if "@pos" in h.name and ":step1" in h.name]
    iia_rows = []
    for name in ctx.progress(list(settings), desc="IIA: sampler settings"):
        numbers["iia"][name], runs, scores, rnd = iia_entry(diff, pairs, hyps, headline, seed=ctx.seed, draws=draws,
                                                            **settings[name])
        if scores is None:
            continue
        rows = [h.name for h in hyps if h.name.endswith("/next") and "@pos" not in h.name]
        iia_rows += [(f"{k} [{name}]", scores[k]) for k in rows]
        iia_rows += [(f"control {h.name} [{name}]", scores[h.name]) for h in controls]
        iia_rows.append((f"random sites, {headline.name} [{name}]", rnd))
        if runs.ctx.n_steps > 1:  # the step-k -> k+1 reading (k = 0: the draft written at step 0, read at step 1)
            sets = [headline.sites(runs.ctx)] + [h.sites(runs.ctx) for h in controls]
            eff = step_effect(runs, sets, step=1)
            numbers["step_effect"][name] = {"unpatched": eff[0], HEADLINE: eff[1],
                                            **{h.name: e for h, e in zip(controls, eff[2:])}}
    pool = correct_pool(ar, HOP_CHAIN.problems("test", n_pool, seed=ctx.seed + 1), ctx.seed, do_sample=False)
    numbers["ar_pool"] = {"n": n_pool, "correct": len(pool)}
    if len({HOP_MODEL.run(p)["h1"] for p in pool}) >= 2:
        ar_hyps = [h1_at(ch, "all", H1_POS, c) for ch in ("canvas", "L0") for c in COMPARES]
        ar_headline = h1_at("L0", "all", H1_POS, "next")
        numbers["iia"]["AR twin (greedy)"], _, s_ar, rnd_ar = iia_entry(
            ar, hop_pairs(n_pairs, seed=ctx.seed, pool=pool), ar_hyps, ar_headline, seed=ctx.seed, draws=draws,
            do_sample=False)
        if s_ar is not None:
            iia_rows += [(f"{k} AR twin", v) for k, v in s_ar.items() if k.endswith("/next")]
            iia_rows.append((f"random sites, {ar_headline.name} AR twin", rnd_ar))
    else:
        numbers["iia"]["AR twin (greedy)"] = {"error": "the AR twin answered too few held-out problems correctly "
                                                       f"({len(pool)}/{n_pool}) to form pairs"}
    numbers["iia_rows"] = [(label, r.to_dict()) for label, r in iia_rows]
    if iia_rows:
        figures["iia"] = iia_figure(iia_rows, "h1 drafted -> h2: IIA (95% Wilson CI)")
    return numbers, figures


def run(ctx: StudyContext) -> Report:
    numbers, figures = compute(ctx)
    return Report(TITLE, render(numbers), figures, numbers)
