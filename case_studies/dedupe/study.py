"""`compute(ctx)` and `run(ctx)`: the dedupe case study (token and sequence smearing, and what places a token).

1. Phenomena per sampler setting on held-out problems: token smearing (`phenomena.token_smearing`,
   off-centre mass from the softmax and from the argmax canvas) and sequence smearing
   (`phenomena.sequence_smearing`: rows with a step best aligned at a shift), with 95% intervals
   (bootstrap over rows for masses, Wilson for row fractions), next to the AR twin (greedy) and a
   random-order baseline (`random_order`): the same rows, steps and number of tokens in place per step, at
   random positions, the rest uniform random tokens (what the sampler's noise draws from).
2. Causal test (`phenomena.canvas_flips`): resample-ablate the drafted token at canvas position q at
   step k, and the previous step's logits entering the self-conditioning channel there (where a smeared
   token's probability is carried), from a run on another problem; how often does the final token at q + 1 (the right neighbour)
   change, against q - 1 and positions two or more away (random sites).
3. IIA of "o_1 is placed by / places its neighbours" (`hypothesis.digit_at`): the scan model (later
   tokens follow from where the drafted digit occurs) vs the independent model, at each site, next to
   random sites and the AR twin (the transparency table's row).
Every number in the report is computed here; the text is `report.render(numbers)`.
"""

from __future__ import annotations

import random

import torch

from case_studies.chain_common import neighbour_rates
from case_studies.common_report import collect_probes, iia_figure, slug
from case_studies.smear_common import random_order, smear_numbers
from case_studies.samplers import sampler_grid
from dgt_interp.causal import PairRuns, expected_answers, random_site_baseline
from dgt_interp.evaluate import prompt_batch
from dgt_interp.patching import Patching
from dgt_interp.phenomena import canvas_flips, detect_phenomena, sequence_smearing, token_smearing
from dgt_interp.studies import Report, StudyContext
from dgt_interp.tasks import DEDUPE, EOS_ID
from dgt_interp.viz import canvas_figure

from .hypothesis import dedupe_pairs, digit_at
from .report import AR_TWIN, MODELS_SCORED, RANDOM, TITLE, render




def sampler_settings(quick: bool) -> dict[str, dict]:
    """The zoo default first, then settings that resolve the canvas over more steps (the last is the slowest)."""
    if quick:
        return sampler_grid(["eb=0.1 (default)", "eb=1e-4, strict stop"])
    return sampler_grid(["eb=0.1 (default)", "eb=1e-4, strict stop", "eb=1e-4, strict stop, T=1.2-1.6"])


# ----------------------------------------------------------------------------- 1. phenomena


def _phenomena(diff, ar, problems, settings, seed, progress) -> tuple[dict, dict]:
    numbers, trajs = {}, {}
    for name in progress(list(settings), desc="phenomena: sampler settings"):
        traj, det = detect_phenomena(diff, problems, seed=seed, **settings[name])
        trajs[name] = traj
        seq = det["sequence_smearing"]
        numbers[name] = {"accuracy": det["accuracy"], "mean_steps": det["commit_argmax"].to_dict()["mean_steps"],
                         "probs": smear_numbers(traj, "probs", seq, seed),
                         "argmax": smear_numbers(traj, "argmax", seq, seed), "detected": det}
    traj_ar, det_ar = detect_phenomena(ar, problems, seed=seed, do_sample=False)
    trajs[AR_TWIN] = traj_ar
    numbers[AR_TWIN] = {"accuracy": det_ar["accuracy"], "mean_steps": float(traj_ar.n_steps),
                        "argmax": smear_numbers(traj_ar, "argmax", det_ar["sequence_smearing"], seed),
                        "detected": det_ar}
    return numbers, trajs


# ----------------------------------------------------------------------------- 2. causal test


def _flips(model, base, src, seed, max_steps, **gen):
    """canvas_flips on jointly padded base/source prompts (both runs replay the same noise)."""
    batch = prompt_batch([p.prompt for p in base] + [p.prompt for p in src])
    n = len(base)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n_steps = Patching(model, ids[n:], ids[:n], seed=seed, attention_mask=mask[n:], corrupted_attention_mask=mask[:n],
                       **gen).n_steps
    return canvas_flips(model, ids[:n], ids[n:], steps=list(range(min(n_steps, max_steps))),
                        channels=("canvas", "self_cond"),
                        eos_id=EOS_ID, seed=seed, attention_mask=mask[:n], source_attention_mask=mask[n:],
                        batch_size=32, **gen), n_steps


# ----------------------------------------------------------------------------- 3. IIA


def _wheres(n_layers: int) -> list:
    return list(range(n_layers)) + ["selfcond", "canvas"]


def _score(runs, wheres) -> dict:
    """{hypothesis name: IIAResult} for every site x model (one patched run per site)."""
    site_sets = [digit_at(w).sites(runs.ctx) for w in wheres]
    outs = runs.outputs(site_sets, batch_size=32)
    res = {}
    for w, o in zip(wheres, outs):
        for m in MODELS_SCORED:
            h = digit_at(w, m)
            res[h.name] = runs.score(h.name, h.sites(runs.ctx), o, expected_answers(h, runs.pairs), h)
    return res


def compute(ctx: StudyContext) -> tuple[dict, dict]:
    """The study's numbers (everything `report.render` needs) and figures."""
    quick = ctx.quick
    n_pheno = 8 if quick else 128
    n_causal = 4 if quick else 32
    n_pairs = 6 if quick else 96
    draws = 2 if quick else 4
    max_flip_steps = 2 if quick else 8
    diff, ar = ctx.load("diffusion"), ctx.load("ar")
    settings = sampler_settings(quick)
    default, slow = list(settings)[0], list(settings)[-1]
    problems = DEDUPE.problems("test", n_pheno, seed=ctx.seed + 1)
    numbers: dict = {"settings": list(settings), "n_phenomena_prompts": n_pheno, "n_causal_prompts": n_causal,
                     "n_pairs": n_pairs, "phenomena": {}, "causal": {}, "iia": {}}
    figures: dict = {}

    # 1. phenomena
    ph, trajs = _phenomena(diff, ar, problems, settings, ctx.seed, ctx.progress)
    for name, r in ph.items():
        collect_probes(numbers, name, r.pop("detected"))
    for name in settings:  # the random-order baseline of each setting, matched to its in-place progress
        rnd = random_order(trajs[name], ctx.seed)
        ph[f"{RANDOM}, {name}"] = {"accuracy": ph[name]["accuracy"], "mean_steps": ph[name]["mean_steps"],
                                   "of_setting": name,
                                   "argmax": smear_numbers(rnd, "argmax", sequence_smearing(rnd, eos_id=EOS_ID),
                                                            ctx.seed)}
    numbers["phenomena"] = ph
    for name in (default, slow):
        figures[f"token_smearing_{slug(name)}"] = token_smearing(trajs[name], eos_id=EOS_ID).figure(
            f"token smearing, {name}")
        figures[f"sequence_smearing_{slug(name)}"] = sequence_smearing(trajs[name], eos_id=EOS_ID).figure(
            f"sequence smearing, {name}")
    figures["sequence_smearing_random"] = sequence_smearing(rnd, eos_id=EOS_ID).figure(
        f"sequence smearing, {RANDOM}, {slow}")
    seq = sequence_smearing(trajs[slow], eos_id=EOS_ID)
    example = int(seq.smeared.sum(-1).argmax()) if bool(seq.smeared.any()) else 0
    numbers["example_row"] = example
    figures["canvas_example"] = canvas_figure(trajs[slow], batch=example)

    # 2. causal test: patch a drafted token, watch its neighbours
    rng = random.Random(f"dedupe-study:{ctx.seed}")
    base_p = [DEDUPE.sample(rng) for _ in range(n_causal)]
    src_p = [DEDUPE.sample(rng) for _ in range(n_causal)]
    for name in ctx.progress([default] if quick else [default, slow], desc="canvas patching: sampler settings"):
        flips, n_steps = _flips(diff, base_p, src_p, ctx.seed, max_flip_steps, **settings[name])
        numbers["causal"][name] = {"steps_patched": len(flips.steps), "base_steps": n_steps,
                                   "rates": neighbour_rates(flips, ctx.seed), **flips.later_on_earlier()}
        figures[f"canvas_flips_{slug(name)}"] = flips.figure(f"canvas patch flip rate, {name}")

    # 3. IIA: is o_1 where the scan continues from?
    pairs = dedupe_pairs(n_pairs, seed=ctx.seed)
    headline = digit_at(0, "scan")
    iia_rows = []
    for kind, model, gen in (("diffusion", diff, settings[default]), ("ar", ar, {"do_sample": False})):
        runs = PairRuns(model, pairs, seed=ctx.seed, **gen)
        label = default if kind == "diffusion" else AR_TWIN
        if not runs.pairs:
            numbers["iia"][label] = {"error": "the model answered no pair correctly unpatched", "dropped": runs.dropped}
            continue
        n_layers = model.config.get_text_config().num_hidden_layers
        wheres = _wheres(n_layers) if kind == "diffusion" else [w for w in _wheres(n_layers) if w != "selfcond"]
        scores = _score(runs, wheres)
        base_rnd = random_site_baseline(model, headline, runs=runs, draws=draws, seed=ctx.seed, batch_size=32)
        numbers["iia"][label] = {"pairs_kept": len(runs.pairs), "dropped": runs.dropped,
                                 "hypotheses": {k: v.to_dict() for k, v in scores.items()},
                                 "random_sites": base_rnd.to_dict()}
        suffix = "" if kind == "diffusion" else " AR twin"
        iia_rows += [(f"{k}{suffix}", v) for k, v in scores.items()]
        iia_rows.append((f"random sites, {headline.name}{suffix}", base_rnd))
    numbers["iia_rows"] = [(label, r.to_dict()) for label, r in iia_rows]
    if iia_rows:
        figures["iia"] = iia_figure(iia_rows, "o1 at each site: IIA (95% Wilson CI)")
    return numbers, figures


def run(ctx: StudyContext) -> Report:
    numbers, figures = compute(ctx)
    return Report(TITLE, render(numbers), figures, numbers)
