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

import copy
import random

import torch

from case_studies.common_report import collect_probes, iia_figure, slug
from case_studies.count_common import offcentre_mass
from case_studies.samplers import sampler_grid
from dgt_interp.causal import PairRuns, expected_answers, random_site_baseline
from dgt_interp.evaluate import prompt_batch
from dgt_interp.patching import Patching
from dgt_interp.phenomena import canvas_flips, detect_phenomena, sequence_smearing, token_smearing
from dgt_interp.stats import bootstrap_interval, wilson_interval
from dgt_interp.studies import Report, StudyContext
from dgt_interp.tasks import DEDUPE, EOS_ID, VOCAB
from dgt_interp.viz import canvas_figure

from .hypothesis import dedupe_pairs, digit_at
from .report import AR_TWIN, MODELS_SCORED, RANDOM, TITLE, render




def sampler_settings(quick: bool) -> dict[str, dict]:
    """The zoo default first, then settings that resolve the canvas over more steps (the last is the slowest)."""
    if quick:
        return sampler_grid(["eb=0.1 (default)", "eb=1e-4, strict stop"])
    return sampler_grid(["eb=0.1 (default)", "eb=1e-4, strict stop", "eb=1e-4, strict stop, T=1.2-1.6"])


# ----------------------------------------------------------------------------- 1. phenomena


def _only_row(traj, b: int):
    """A shallow copy of `traj` in which only row b is active (the detectors weight rows by `active`)."""
    t = copy.copy(traj)
    active = traj.records["active"].clone()
    keep = torch.zeros_like(active, dtype=torch.bool)
    keep[:, b] = True
    t.records = {**traj.records, "active": active.bool() & keep}
    return t


def _row_parts(traj, source: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row, (mass * counts, counts) `[K, D]` of `token_smearing` on that row alone (sums over rows give
    the pooled detector: its mass is sum(mass * counts) / sum(counts))."""
    out = []
    for b in range(traj.final_tokens().shape[0]):
        ts = token_smearing(_only_row(traj, b), eos_id=EOS_ID, source=source)
        out.append((torch.nan_to_num(ts.mass) * ts.counts, ts.counts.clone()))
    return out


def _pooled(parts, step: int | None) -> float:
    """Off-centre token mass pooled over `parts` rows: summed over offsets d != 0 of the (row, position)-weighted
    mean at canvas step `step` (None: over every step), as `count_common.offcentre_mass` does."""
    k_max = max(p[0].shape[0] for p in parts)
    num = torch.zeros(k_max, parts[0][0].shape[1])
    cnt = torch.zeros_like(num)
    for n, c in parts:
        num[: n.shape[0]] += n
        cnt[: c.shape[0]] += c
    if step is not None:
        num, cnt = num[step:step + 1], cnt[step:step + 1]
    zero = num.shape[1] // 2
    return float(sum((num[:, j].sum() / cnt[:, j].sum().clamp(min=1)) for j in range(num.shape[1]) if j != zero))


def _smear_numbers(traj, source: str, seq, seed: int) -> dict:
    """Token smearing (pooled mean over steps, step 0) and sequence smearing (rows), with 95% intervals."""
    ts = token_smearing(traj, eos_id=EOS_ID, source=source)
    parts = _row_parts(traj, source)
    rows_smeared = seq.smeared.any(-1)
    n, k = int(rows_smeared.numel()), int(rows_smeared.sum())
    by_step = torch.isfinite(seq.best_shift)
    return {"source": source, "token_smearing": ts.to_dict(), "robust": offcentre_mass(ts),
            "mass_all_steps": _pooled(parts, None),
            "mass_all_steps_ci95": bootstrap_interval(parts, lambda v: _pooled(v, None), seed=seed),
            "mass_step0": _pooled(parts, 0),
            "mass_step0_ci95": bootstrap_interval(parts, lambda v: _pooled(v, 0), seed=seed),
            "sequence_smearing": seq.to_dict(),
            "rows_smeared": k, "rows": n, "rows_smeared_fraction": k / n if n else float("nan"),
            "rows_smeared_ci95": wilson_interval(k, n),
            "smeared_fraction_by_step": [float(seq.smeared[:, j][by_step[:, j]].float().mean())
                                         if by_step[:, j].any() else float("nan") for j in range(by_step.shape[1])]}


def random_order(traj, seed: int):
    """The random-order baseline of a diffusion trajectory: each row keeps its steps, its final tokens and, at
    every step, the number of answer positions whose argmax already holds the final token in place; which
    positions those are is drawn at random, and every other position holds a uniformly random token of the
    vocabulary other than its final one. Same in-place progress, no systematic shift: off-centre matches
    are chance coincidences."""
    g = torch.Generator().manual_seed(seed)
    steps, active = traj.active_rows()
    final = traj.final_tokens()
    mask = traj.answer_mask(EOS_ID)
    arg = traj.records["argmax_canvas"].clone()
    b_n, length = final.shape
    for b in range(b_n):
        pos = torch.nonzero(mask[b]).flatten()
        mine = [s for k, s in enumerate(steps) if bool(active[k, b])] or steps[:1]
        for s in mine:
            n_ok = int((arg[s, b, pos] == final[b, pos]).sum())
            noise = torch.randint(0, len(VOCAB) - 1, (length,), generator=g)
            noise = noise + (noise >= final[b]).long()  # uniform over the vocabulary minus the final token
            row = noise.clone()
            ok = pos[torch.randperm(len(pos), generator=g)[:n_ok]]
            row[ok] = final[b, ok]
            arg[s, b] = row
        arg[mine[-1], b] = final[b]
    t = copy.copy(traj)
    t.records = {**traj.records, "argmax_canvas": arg}
    return t


def _phenomena(diff, ar, problems, settings, seed, progress) -> tuple[dict, dict]:
    numbers, trajs = {}, {}
    for name in progress(list(settings), desc="phenomena: sampler settings"):
        traj, det = detect_phenomena(diff, problems, seed=seed, **settings[name])
        trajs[name] = traj
        seq = det["sequence_smearing"]
        numbers[name] = {"accuracy": det["accuracy"], "mean_steps": det["commit_argmax"].to_dict()["mean_steps"],
                         "probs": _smear_numbers(traj, "probs", seq, seed),
                         "argmax": _smear_numbers(traj, "argmax", seq, seed), "detected": det}
    traj_ar, det_ar = detect_phenomena(ar, problems, seed=seed, do_sample=False)
    trajs[AR_TWIN] = traj_ar
    numbers[AR_TWIN] = {"accuracy": det_ar["accuracy"], "mean_steps": float(traj_ar.n_steps),
                        "argmax": _smear_numbers(traj_ar, "argmax", det_ar["sequence_smearing"], seed),
                        "detected": det_ar}
    return numbers, trajs


# ----------------------------------------------------------------------------- 2. causal test


def _neighbour_rates(flips, seed: int) -> dict:
    """Flip rate of the final token at q + d when the drafted token at q is patched at some step, pooled over
    (step, q, row) events where the patch changed the input and q + d is an answer position; d = +1 (right
    neighbour), -1 (left neighbour), |d| >= 2 (random sites). Bootstrap 95% intervals over rows."""
    f, patched, mask = flips.flips, flips.patched, flips.mask  # [K,Q,B,L], [K,Q,B], [B,L]
    k_n, q_n, b_n, l_n = f.shape
    cats = {"right neighbour (q+1)": lambda d: d == 1, "left neighbour (q-1)": lambda d: d == -1,
            "random sites (|p-q| >= 2)": lambda d: abs(d) >= 2}
    per_row = {c: [[0, 0] for _ in range(b_n)] for c in cats}
    for qi, q in enumerate(flips.positions):
        for p in range(l_n):
            d = p - q
            for c, ok in cats.items():
                if not ok(d):
                    continue
                w = patched[:, qi, :] & mask[None, :, p]  # [K, B]
                hit = f[:, qi, :, p] & w
                for b in range(b_n):
                    per_row[c][b][0] += int(hit[:, b].sum())
                    per_row[c][b][1] += int(w[:, b].sum())

    def ratio(rows):
        n = sum(r[1] for r in rows)
        return sum(r[0] for r in rows) / n if n else float("nan")

    return {c: {"rate": ratio(rows), "hits": sum(r[0] for r in rows), "events": sum(r[1] for r in rows),
                "ci95": bootstrap_interval(rows, ratio, seed=seed)} for c, rows in per_row.items()}


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
                                   "argmax": _smear_numbers(rnd, "argmax", sequence_smearing(rnd, eos_id=EOS_ID),
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
                                   "rates": _neighbour_rates(flips, ctx.seed), **flips.later_on_earlier()}
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
