"""`compute(ctx)` and `run(ctx)`: the compose case study (non-chronological reasoning, intermediate-context
reasoning and retroactive self-correction).

1. Records, per sampler setting and on the AR twin (`phenomena.detect_phenomena`): accuracy; the commit order
   of the ten answer digits (`phenomena.commit_order` by the argmax canvas, EOS excluded): Spearman rho of
   commit step against position per row (mean, bootstrap interval; -1 = right to left) and the fraction of
   rows committed right to left (no digit before the one to its right, not all at once), next to a
   random-order baseline (each row's commit steps over its positions in random orders: the same steps, no
   order) and the AR twin; the mean commit step per position; the step-0 argmax per position (what one
   forward pass gets right: the rightmost digits, not those that need more maps in turn, if one pass cannot
   chain them); kept drafts later overwritten (`phenomena.find_drafts`: natural self-correction).
2. Canvas patching (`phenomena.canvas_flips`, canvas token and self-conditioning logits): every position q at
   each of the first steps, from a run on another problem. How often the digit to q's left, to its right and
   two or more away changes, in the argmax of the patched step itself (the draft used as context right away)
   and in the emitted answer; later-on-earlier against earlier-on-later; and how often a wrong digit written
   from a patched right neighbour is corrected by the end (retroactive self-correction).
3. Interchange interventions (`dgt_interp.causal`, `hypothesis.link_at`), with sources that share the base's
   maps and start from another digit (`compose_pairs(same_maps=True)`): the drafted suffix c_6..c_9 (canvas
   tokens, self-conditioning logits, both, or the residual after block 0 at positions 6-9, every step) patched
   from the source; the base should then emit c_5 = o_5(c_6_src) (`/next`) and the whole chain to its left
   (`/chain`). Next to it: c_6's position alone (a single drafted digit, which the model can check against its
   unpatched right neighbour), every link's suffix, random sites, and the AR twin (pairs it answers correctly).
   The step-k reading: after patching the drafted c_8 c_9 at step 1 only, is the argmax at position 7 right
   after step 1 o_7(c_8_src)? Controls: the same patch two positions wide further left.
Every number in the report is computed here; the text is `report.render(numbers)`.
"""

from __future__ import annotations

import torch

from case_studies.chain_common import (corrected_drafts, correct_pool, iia_entry, neighbour_rates, order_effects,
                                       random_order, right_to_left, sampled_flips, step_effect, training)
from case_studies.common_report import collect_probes, iia_figure, rate, slug
from case_studies.samplers import sampler_grid
from dgt_interp.phenomena import detect_phenomena, draft_effects, find_drafts
from dgt_interp.stats import nanmean
from dgt_interp.studies import Report, StudyContext
from dgt_interp.tasks import EOS_ID, COMPOSE, VOCAB

from .hypothesis import COMPOSE_MODEL, HEADLINE_LINK, N, compose_pairs, link_at
from .report import AR, HEADLINE, TITLE, render

CAUSAL_CHANNELS = ("canvas", "selfcond", "both", "L0")
DIGITS = list(range(N))  # answer positions without EOS


def sampler_settings(quick: bool) -> dict[str, dict]:
    """The zoo default (entropy bound 0.1) first, then one that accepts fewer digits per step."""
    return sampler_grid(["eb=0.1 (default)"] if quick else ["eb=0.1 (default)", "eb=1e-3"])


def _records(model, problems, seed, **gen) -> tuple[object, dict, dict]:
    """(the argmax `CommitOrder`, the record numbers, every probe's results) of one batch of problems."""
    traj, det = detect_phenomena(model, problems, seed=seed, eos_id=EOS_ID, **gen)
    co = det["commit_argmax"]
    cs = co.commit_step[:, :N]
    done = torch.isfinite(cs).all(1)  # rows whose answer has all its digits
    cs = cs[done]
    rtl = [right_to_left(r) for r in cs]
    at_once = [bool(r.max() == r.min()) for r in cs]
    drafts = det["drafts"]
    kept = [d for d in drafts.drafts if d.in_canvas and d.pos < N]
    out = {"accuracy": det["accuracy"], "rows": len(problems), "rows_with_all_digits": int(done.sum()),
           "commit": co.to_dict(), "right_to_left": rate(sum(rtl), len(rtl)), "all_at_once": rate(sum(at_once), len(at_once)),
           "random_order": random_order(cs, order=right_to_left, seed=seed),
           "mean_commit_step": [nanmean(cs[:, j]) for j in DIGITS],
           "kept_drafts": {"n": len(kept), "rows": rate(len({d.batch for d in kept}), len(problems))}}
    if traj.kind == "diffusion":  # the first step's argmax per position: what one forward pass gets right
        first = torch.stack([traj.records["argmax_canvas"][steps[0], b] for b, steps in enumerate(traj.row_steps(0))])
        want = torch.tensor([[VOCAB.index(c) for c in p.answer] for p in problems])
        out["step0_argmax"] = [rate(int((first[:, j] == want[:, j]).sum()), len(problems)) for j in DIGITS]
    return co, out, det


def _causal_numbers(flips, seed: int) -> dict:
    drafts = find_drafts(flips.base, eos_id=EOS_ID)
    return {"steps_patched": len(flips.steps),
            "step": {"rates": neighbour_rates(flips, seed, at="step", positions=DIGITS), **flips.later_on_earlier("step")},
            "final": {"rates": neighbour_rates(flips, seed, at="final", positions=DIGITS), **flips.later_on_earlier("final")},
            "order": order_effects(flips, seed, at="step"),
            "corrected": corrected_drafts(flips, offset=1, positions=DIGITS),
            "natural_drafts": {"found": drafts.to_dict()["n_in_canvas"], **draft_effects(drafts, flips).to_dict()}}


SUFFIX = N - HEADLINE_LINK  # the drafted states c6..c9
STEP_LINK = N - 2  # c8: drafted at step 0 (two maps from s); c7 is computed from it at step 1


def hypotheses() -> list:
    hyps = [link_at(HEADLINE_LINK, ch, "all", span=SUFFIX, compare=c) for ch in CAUSAL_CHANNELS for c in ("next", "chain")]
    hyps += [link_at(HEADLINE_LINK, "both", "all", compare=c) for c in ("next", "chain")]  # c6's own position only
    hyps += [link_at(j, "both", "all", span=N - j) for j in range(1, N) if j != HEADLINE_LINK]  # every link's suffix
    return hyps


def _step_hypotheses() -> list:
    """The step-1 patch of the drafted c8 c9, and the same patch at two positions to the left (controls)."""
    return [link_at(STEP_LINK, "both", "step1", span=2)] + [link_at(STEP_LINK, "both", "step1", pos=p, span=2)
                                                           for p in (2, 4)]


def compute(ctx: StudyContext) -> tuple[dict, dict]:
    """The study's numbers (everything `report.render` needs) and figures."""
    quick = ctx.quick
    n_rec = 16 if quick else 256
    n_causal = 4 if quick else 32
    max_flip_steps = 2 if quick else 6
    n_pairs = 8 if quick else 128
    n_pool = 32 if quick else 512
    draws = 2 if quick else 8
    diff, ar = ctx.load("diffusion"), ctx.load("ar")
    settings = sampler_settings(quick)
    problems = COMPOSE.problems("test", n_rec, seed=ctx.seed)
    numbers: dict = {"settings": list(settings), "settings_kwargs": {k: {a: repr(b) for a, b in v.items()}
                                                                      for k, v in settings.items()},
                     "canvas_length": int(diff.config.canvas_length), "n_record_prompts": n_rec,
                     "n_causal_prompts": n_causal, "n_pairs": n_pairs, "records": {}, "causal": {}, "iia": {},
                     "step_effect": {}, "training": {kind: training(ctx.models[kind]) for kind in ("diffusion", "ar")}}
    figures: dict = {}

    # 1. records per setting + AR twin
    for name in ctx.progress(list(settings), desc="records: sampler settings"):
        co, numbers["records"][name], det = _records(diff, problems, ctx.seed, **settings[name])
        figures[f"commit_order_{slug(name)}"] = co.figure(f"commit step per position, {name}")
        collect_probes(numbers, name, det)
    _, numbers["records"][AR], det = _records(ar, problems, ctx.seed, do_sample=False)
    collect_probes(numbers, AR, det)

    # 2. canvas patching: who reads whose draft
    for name in ctx.progress(list(settings), desc="canvas patching: sampler settings"):
        flips = sampled_flips(diff, COMPOSE, n_causal, ctx.seed, max_flip_steps, **settings[name])
        numbers["causal"][name] = _causal_numbers(flips, ctx.seed)
        figures[f"canvas_flips_step_{slug(name)}"] = _effect_figure(flips, "step", name)
        figures[f"canvas_flips_final_{slug(name)}"] = _effect_figure(flips, "final", name)

    # 3. interchange interventions on c_6's draft
    pairs = compose_pairs(n_pairs, seed=ctx.seed, same_maps=True)
    step_hyps = _step_hypotheses()
    hyps = hypotheses() + step_hyps
    headline = next(h for h in hyps if h.name == HEADLINE)
    iia_rows = []
    for name in ctx.progress(list(settings), desc="IIA: sampler settings"):
        numbers["iia"][name], runs, scores, rnd = iia_entry(diff, pairs, hyps, headline, seed=ctx.seed, draws=draws,
                                                            **settings[name])
        if scores is None:
            continue
        iia_rows += [(f"{h.name} [{name}]", scores[h.name]) for h in hyps if h.name in scores]
        iia_rows.append((f"random sites, {headline.name} [{name}]", rnd))
        if runs.ctx.n_steps > 1:  # the drafts written at step 0, read at step 1
            want = torch.tensor([VOCAB.index(COMPOSE_MODEL.counterfactual(b, s, [f"c{STEP_LINK}"])[STEP_LINK - 1])
                                 for b, s in runs.pairs])
            eff = step_effect(runs, [h.sites(runs.ctx) for h in step_hyps], 1, STEP_LINK - 1, want)
            numbers["step_effect"][name] = {"unpatched": eff[0], **{h.name: e for h, e in zip(step_hyps, eff[1:])}}
    pool = correct_pool(ar, COMPOSE.problems("test", n_pool, seed=ctx.seed + 1), ctx.seed, do_sample=False)
    numbers["ar_pool"] = {"n": n_pool, "correct": len(pool)}
    if pool:
        ar_hyps = [link_at(HEADLINE_LINK, ch, "all", span=SUFFIX, compare=c) for ch in ("canvas", "L0")
                   for c in ("next", "chain")]
        ar_headline = link_at(HEADLINE_LINK, "L0", "all", span=SUFFIX, compare="chain")
        numbers["iia"][AR], _, s_ar, rnd_ar = iia_entry(ar, compose_pairs(n_pairs, seed=ctx.seed, pool=pool,
                                                                          same_maps=True),
                                                        ar_hyps, ar_headline, seed=ctx.seed, draws=draws,
                                                        do_sample=False)
        if s_ar is not None:
            iia_rows += [(f"{k} AR twin", v) for k, v in s_ar.items()]
            iia_rows.append((f"random sites, {ar_headline.name} AR twin", rnd_ar))
    else:
        numbers["iia"][AR] = {"error": f"the AR twin answered no held-out problem correctly (of {n_pool})"}
    numbers["iia_rows"] = [(label, r.to_dict()) for label, r in iia_rows]
    if iia_rows:
        figures["iia"] = iia_figure(iia_rows, "drafted suffix -> the digits to its left: IIA (95% Wilson CI)")
    return numbers, figures


def _effect_figure(flips, at: str, name: str):
    what = "patched step" if at == "step" else "emitted answer"
    return flips.figure(f"flip rate ({what}), {name}", at=at)


def run(ctx: StudyContext) -> Report:
    numbers, figures = compute(ctx)
    return Report(TITLE, render(numbers), figures, numbers)
