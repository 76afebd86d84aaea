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

import itertools
import json
from pathlib import Path

import torch

from case_studies.common_report import collect_probes, iia_figure, rate, slug
from case_studies.samplers import sampler_grid
from dgt_interp import zoo
from dgt_interp.causal import PairRuns, expected_answers, random_site_baseline
from dgt_interp.evaluate import generate_answers
from dgt_interp.phenomena import detect_phenomena
from dgt_interp.stats import bootstrap_interval, nanmean, spearman
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


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def random_order(commit_steps: torch.Tensor) -> dict:
    """The random-order baseline: each row's commit steps (over h3, h2, h1) assigned to the positions in every
    order, averaged per row (rho over rows with an order; strictly right to left over all rows)."""
    rhos, rtl = [], []
    pos = torch.arange(commit_steps.shape[1]).float()
    for row in commit_steps:
        perms = [row[list(p)] for p in itertools.permutations(range(len(row)))]
        r = [spearman(p, pos) for p in perms]
        r = [x for x in r if x == x]
        if r:
            rhos.append(_mean(r))
        rtl.append(_mean([float(all(p[i] > p[i + 1] for i in range(len(p) - 1))) for p in perms]))
    return {"mean_rho": _mean(rhos) if rhos else float("nan"),
            "ci95_rho": list(bootstrap_interval(rhos, _mean, seed=0)),
            "fraction_right_to_left": _mean(rtl) if rtl else float("nan"),
            "ci95_right_to_left": list(bootstrap_interval(rtl, _mean, seed=0))}


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


def _score(runs, hyps) -> dict:
    """{hypothesis name: IIAResult}, one patched run per distinct site set (empty site sets skipped)."""
    keys, site_sets = [], []
    for h in hyps:
        s = h.sites(runs.ctx)
        if s and repr(s) not in keys:
            keys.append(repr(s))
            site_sets.append(s)
    outs = runs.outputs(site_sets, batch_size=32) if site_sets else []
    res = {}
    for h in hyps:
        s = h.sites(runs.ctx)
        if s:
            res[h.name] = runs.score(h.name, s, outs[keys.index(repr(s))], expected_answers(h, runs.pairs), h)
    return res


def step_effect(runs, site_sets, step: int) -> list[dict]:
    """Per site set: how often the argmax at position 1 right after `step` (the step the patch is read at) is
    already the counterfactual h2 = f_base(h1_src), over the kept pairs; [0] the unpatched base."""
    keep = torch.nonzero(runs.keep).flatten()
    want = torch.tensor([VOCAB.index(str(HOP_MODEL.counterfactual(b, s, ["h1"])[H2_POS])) for b, s in runs.pairs])
    base = runs.p.corrupted.records["argmax_canvas"][step][keep, H2_POS]
    out = [rate(int((base == want).sum()), len(keep))]
    batch = runs.p.batch
    for _, n, traj in runs.p.iter_runs(site_sets, record=(), batch_size=32):
        am = traj.records["argmax_canvas"][step]
        for i in range(n):
            got = am[i * batch:(i + 1) * batch][keep, H2_POS]
            out.append(rate(int((got == want).sum()), len(keep)))
    return out


def _hypotheses() -> list:
    hyps = [h1_at(ch, st, H1_POS, c) for ch in CAUSAL_CHANNELS for st in STEPS for c in COMPARES]
    hyps += [h1_at("both", st, p, "next") for st in STEPS for p in (H3_POS, H2_POS, EOS_POS)]  # position controls
    return hyps


def _correct_pool(model, problems, seed, **gen) -> list:
    """The problems `model` answers exactly (one batch)."""
    answers = generate_answers(model, [p.prompt for p in problems], seed=seed, **gen).answers
    return [p for p, a in zip(problems, answers) if a == p.answer]


def training(model_name: str) -> dict:
    """What the model's recipe.json records about its training (steps, final loss, held-out exact match, the
    learning curve); {} for a model without one."""
    f = Path(zoo.resolve(model_name)) / "recipe.json"
    if not f.is_file():
        return {}
    r = json.loads(f.read_text())
    acc = r.get("heldout_exact_match", {})
    return {"steps": r["train_config"]["steps"], "batch_size": r["train_config"]["batch_size"],
            "layers": r["train_config"]["size"]["num_hidden_layers"], "final_loss": r.get("final_loss"),
            "heldout_accuracy": acc.get("accuracy"), "heldout_ci95": acc.get("ci95"), "heldout_n": acc.get("n"),
            "learning_curve": r.get("learning_curve", [])}


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
        runs = PairRuns(diff, pairs, seed=ctx.seed, **settings[name])
        if not runs.pairs:
            numbers["iia"][name] = {"error": "the model answered no pair correctly unpatched", "dropped": runs.dropped}
            continue
        scores = _score(runs, hyps)
        rnd = random_site_baseline(diff, headline, runs=runs, draws=draws, seed=ctx.seed, batch_size=32)
        numbers["iia"][name] = {"pairs_kept": len(runs.pairs), "dropped": runs.dropped, "n_steps": runs.ctx.n_steps,
                                "hypotheses": {k: v.to_dict() for k, v in scores.items()},
                                "random_sites": rnd.to_dict()}
        rows = [h.name for h in hyps if h.name.endswith("/next") and "@pos" not in h.name]
        iia_rows += [(f"{k} [{name}]", scores[k]) for k in rows]
        iia_rows += [(f"control {h.name} [{name}]", scores[h.name]) for h in controls]
        iia_rows.append((f"random sites, {headline.name} [{name}]", rnd))
        if runs.ctx.n_steps > 1:  # the step-k -> k+1 reading (k = 0: the draft written at step 0, read at step 1)
            sets = [headline.sites(runs.ctx)] + [h.sites(runs.ctx) for h in controls]
            eff = step_effect(runs, sets, step=1)
            numbers["step_effect"][name] = {"unpatched": eff[0], HEADLINE: eff[1],
                                            **{h.name: e for h, e in zip(controls, eff[2:])}}
    pool = _correct_pool(ar, HOP_CHAIN.problems("test", n_pool, seed=ctx.seed + 1), ctx.seed, do_sample=False)
    numbers["ar_pool"] = {"n": n_pool, "correct": len(pool)}
    if len({HOP_MODEL.run(p)["h1"] for p in pool}) >= 2:
        runs_ar = PairRuns(ar, hop_pairs(n_pairs, seed=ctx.seed, pool=pool), seed=ctx.seed, do_sample=False)
        ar_hyps = [h1_at(ch, "all", H1_POS, c) for ch in ("canvas", "L0") for c in COMPARES]
        s_ar = _score(runs_ar, ar_hyps)
        ar_headline = h1_at("L0", "all", H1_POS, "next")
        rnd_ar = random_site_baseline(ar, ar_headline, runs=runs_ar, draws=draws, seed=ctx.seed, batch_size=32)
        numbers["iia"]["AR twin (greedy)"] = {"pairs_kept": len(runs_ar.pairs), "dropped": runs_ar.dropped,
                                              "hypotheses": {k: v.to_dict() for k, v in s_ar.items()},
                                              "random_sites": rnd_ar.to_dict()}
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
