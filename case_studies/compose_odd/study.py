"""`compute(ctx)` and `run(ctx)`: the compose_odd case study (token and sequence smearing of a list whose place is
computed last).

1. Phenomena per sampler setting on held-out problems, in the list region (canvas positions from 11): token
   smearing (`phenomena.token_smearing(positions=...)`: off-centre mass from the argmax canvas and the softmax)
   and sequence smearing (`phenomena.sequence_smearing(positions=...)`: rows with a step whose list is best
   aligned at a shift), with 95% intervals, next to the AR twin (greedy) and a random-order baseline
   (`smear_common.random_order`: the same in-place progress at random list positions).
2. Causal test: what places the list? `phenomena.canvas_flips` patches the drafted state at position q (canvas
   token and self-conditioning logits) at each of the first steps from a run on another problem. Where the
   source's drafted state has the other parity, the number of odd states left of every later list element
   changes by one, so if the list's place is read off the drafted states, the list in the argmax of the
   patched step moves by one position in that direction. `list_shift` compares the patched step's list with
   the unpatched one's (best alignment, as `sequence_smearing` compares a step with the final canvas);
   rates for parity-changing patches (shift in the predicted direction), parity-keeping patches, and patches
   at list positions (random sites).
   And the list read off the drafts (`_list_test`): with sources that share the base's maps and start from
   another digit, patching the drafted c_6..c_9 (canvas and self-conditioning, every step) should make the
   emitted list the source's, its digits at the source's offsets; control: as many sites on c_0..c_3.
3. IIA of the drafted suffix c6..c9 (`compose.hypothesis.link_at` with this task's causal model and sources that
   share the base's maps): the transparency table's row, next to random sites and the AR twin.
Every number in the report is computed here; the text is `report.render(numbers)`.
"""

from __future__ import annotations

import torch

from case_studies.chain_common import correct_pool, iia_entry, sampled_flips, training
from case_studies.common_report import collect_probes, iia_figure, rate, slug
from case_studies.compose.hypothesis import N, compose_pairs, link_at
from case_studies.samplers import sampler_grid
from case_studies.smear_common import random_order, smear_numbers
from dgt_interp.causal import PairRuns
from dgt_interp.phenomena import detect_phenomena, sequence_smearing, token_smearing
from dgt_interp.studies import Report, StudyContext
from dgt_interp.patching import Site
from dgt_interp.tasks import COMPOSE_ODD, EOS_ID, VOCAB
from dgt_interp.viz import canvas_figure

from .hypothesis import COMPOSE_ODD_MODEL, LIST_START

LEFT = 6  # the drafted suffix c_6..c_9 (4 states) is patched; the control patches as many states on the left
from .report import AR_TWIN, CONTROL_SITES, HEADLINE, RANDOM, SUFFIX_SITES, TITLE, render

DIGIT_IDS = {VOCAB.index(str(d)): d for d in range(10)}


def sampler_settings(quick: bool) -> dict[str, dict]:
    """The zoo default first, then one that accepts fewer tokens per step (more steps)."""
    return sampler_grid(["eb=0.1 (default)"] if quick else ["eb=0.1 (default)", "eb=1e-3"])


def list_positions(model) -> list[int]:
    return list(range(LIST_START, int(model.config.canvas_length)))


# ----------------------------------------------------------------------------- 1. phenomena


def _phenomena(diff, ar, problems, settings, region, seed, progress) -> tuple[dict, dict]:
    numbers, trajs = {}, {}
    for name in progress(list(settings), desc="phenomena: sampler settings"):
        traj, det = detect_phenomena(diff, problems, seed=seed, eos_id=EOS_ID, **settings[name])
        trajs[name] = traj
        seq = sequence_smearing(traj, eos_id=EOS_ID, positions=region)
        numbers[name] = {"accuracy": det["accuracy"], "mean_steps": det["commit_argmax"].to_dict()["mean_steps"],
                         "probs": smear_numbers(traj, "probs", seq, seed, positions=region),
                         "argmax": smear_numbers(traj, "argmax", seq, seed, positions=region), "detected": det}
    traj_ar, det_ar = detect_phenomena(ar, problems, seed=seed, eos_id=EOS_ID, do_sample=False)
    trajs[AR_TWIN] = traj_ar
    numbers[AR_TWIN] = {"accuracy": det_ar["accuracy"], "mean_steps": float(traj_ar.n_steps),
                        "argmax": smear_numbers(traj_ar, "argmax", sequence_smearing(traj_ar, eos_id=EOS_ID,
                                                                                     positions=region),
                                                seed, positions=region),
                        "detected": det_ar}
    return numbers, trajs


# ----------------------------------------------------------------------------- 2. causal test


def list_shift(patched: torch.Tensor, base: torch.Tensor, region: list[int], max_shift: int = 1) -> int:
    """How far the list in `patched` `[L]` sits from where it sits in `base` `[L]`: the shift d (|d| <= max_shift)
    maximising the fraction of base list positions p with patched[p + d] == base[p], among those where base[p]
    differs from base[p + d] (a token really there at p + d is no evidence); 0 unless that beats d = 0 strictly."""
    best, best_score = 0, None
    scores = {}
    for d in range(-max_shift, max_shift + 1):
        ps = [p for p in region if p + d in region and (d == 0 or base[p] != base[p + d])]
        if ps:
            scores[d] = sum(int(patched[p + d] == base[p]) for p in ps) / len(ps)
    zero = scores.get(0, 0.0)
    for d, v in scores.items():
        if d != 0 and v > zero and (best_score is None or v > best_score):
            best, best_score = d, v
    return best


def _shift_numbers(flips, region: list[int]) -> dict:
    """Events (step, q, row) where the patch changed the input, by kind: the drafted state at q flips parity in
    the canvas the patched step reads (both tokens digits), keeps it, or q is a list position. Per kind, the
    rate of list shifts (in the predicted direction for parity flips: +1 when an odd state enters, -1 when one
    leaves) and of any shift."""
    base_in = flips.base.records["input_canvas"]
    src_in = flips.source.records["input_canvas"]
    base_arg = flips.base.records["argmax_canvas"]
    kinds = {"parity flips": [0, 0, 0], "parity kept": [0, 0, 0], "list positions (random sites)": [0, 0, 0]}
    for k, s in enumerate(flips.steps):
        for qi, q in enumerate(flips.positions):
            for b in range(flips.patched.shape[2]):
                if not bool(flips.patched[k, qi, b]) or not bool(flips.base.records["active"][s, b]):
                    continue
                shift = list_shift(flips.step_argmax[k, qi, b], base_arg[s, b], region)
                if q < N:
                    x, y = DIGIT_IDS.get(int(base_in[s, b, q])), DIGIT_IDS.get(int(src_in[s, b, q]))
                    if x is None or y is None:
                        continue  # a noise token on either side: no drafted state to compare
                    delta = (y % 2) - (x % 2)
                    key, want = ("parity flips", delta) if delta else ("parity kept", 0)
                elif q in region:
                    key, want = "list positions (random sites)", 0
                else:
                    continue
                kinds[key][0] += 1
                kinds[key][1] += int(shift != 0 and (want == 0 or shift == want))
                kinds[key][2] += int(shift != 0)
    return {key: {"predicted_shift" if key == "parity flips" else "shift": rate(v[1], v[0]),
                  "any_shift": rate(v[2], v[0])} for key, v in kinds.items()}


# ----------------------------------------------------------------------------- 3. IIA


def hypotheses() -> list:
    """The drafted suffix c6..c9 (as in the compose study), compared on the states left of it."""
    return [link_at(6, ch, "all", span=N - 6, compare="chain", model=COMPOSE_ODD_MODEL)
            for ch in ("canvas", "selfcond", "both", "L0")]


# ----------------------------------------------------------------------------- 2b. the list read off the drafts


def _list_of(answer: str) -> str:
    return answer.split(":", 1)[1] if ":" in answer else ""


def _list_test(model, pairs, seed: int, **gen) -> dict:
    """With sources that share the base's maps (another start digit, so other states and another list): patch the
    drafted states c_6..c_9 (canvas tokens and self-conditioning logits, every step), a consistent state to
    continue from; is the emitted list the source's, its digits at the source's offsets? Control: the same number
    of sites on the drafted c_0..c_3 (drafts the model checks against the unpatched states to their right)."""
    runs = PairRuns(model, pairs, seed=seed, **gen)
    if not runs.pairs:
        return {"error": "the model answered no pair correctly unpatched", "dropped": runs.dropped}
    site_sets = [[Site(h, None, p) for p in ps for h in ("hook_embed", "self_cond.hook_logits_in")]
                 for ps in (range(LEFT, N), range(N - LEFT))]
    outs = runs.outputs(site_sets, batch_size=32)
    src = [_list_of(s.answer) for _, s in runs.pairs]
    base = [_list_of(b.answer) for b, _ in runs.pairs]
    out = {"pairs_kept": len(runs.pairs), "dropped": runs.dropped,
           "unpatched": rate(sum(b == s for b, s in zip(base, src)), len(src))}
    for name, answers in zip((SUFFIX_SITES, CONTROL_SITES), outs):
        got = [_list_of(a) for a in answers]
        out[name] = {"source_list": rate(sum(g == s for g, s in zip(got, src)), len(src)),
                     "base_list": rate(sum(g == b for g, b in zip(got, base)), len(src))}
    return out


def compute(ctx: StudyContext) -> tuple[dict, dict]:
    """The study's numbers (everything `report.render` needs) and figures."""
    quick = ctx.quick
    n_pheno = 8 if quick else 128
    n_causal = 4 if quick else 32
    max_flip_steps = 2 if quick else 6
    n_pairs = 6 if quick else 96
    n_pool = 32 if quick else 512
    draws = 2 if quick else 4
    diff, ar = ctx.load("diffusion"), ctx.load("ar")
    region = list_positions(diff)
    settings = sampler_settings(quick)
    default, slow = list(settings)[0], list(settings)[-1]
    problems = COMPOSE_ODD.problems("test", n_pheno, seed=ctx.seed + 1)
    numbers: dict = {"settings": list(settings), "n_phenomena_prompts": n_pheno, "n_causal_prompts": n_causal,
                     "n_pairs": n_pairs, "region": region, "canvas_length": int(diff.config.canvas_length),
                     "phenomena": {}, "causal": {}, "list_test": {}, "iia": {},
                     "training": {kind: training(ctx.models[kind]) for kind in ("diffusion", "ar")}}
    figures: dict = {}

    # 1. phenomena
    ph, trajs = _phenomena(diff, ar, problems, settings, region, ctx.seed, ctx.progress)
    for name, r in ph.items():
        collect_probes(numbers, name, r.pop("detected"))
    for name in settings:
        rnd = random_order(trajs[name], ctx.seed, positions=region)
        ph[f"{RANDOM}, {name}"] = {"accuracy": ph[name]["accuracy"], "mean_steps": ph[name]["mean_steps"],
                                   "of_setting": name,
                                   "argmax": smear_numbers(rnd, "argmax", sequence_smearing(rnd, eos_id=EOS_ID,
                                                                                            positions=region),
                                                           ctx.seed, positions=region)}
    numbers["phenomena"] = ph
    for name in dict.fromkeys((default, slow)):
        figures[f"token_smearing_{slug(name)}"] = token_smearing(trajs[name], eos_id=EOS_ID, positions=region).figure(
            f"token smearing in the list, {name}")
        figures[f"sequence_smearing_{slug(name)}"] = sequence_smearing(trajs[name], eos_id=EOS_ID,
                                                                       positions=region).figure(
            f"sequence smearing in the list, {name}")
    seq = sequence_smearing(trajs[default], eos_id=EOS_ID, positions=region)
    example = int(seq.smeared.sum(-1).argmax()) if bool(seq.smeared.any()) else 0
    numbers["example_row"] = example
    figures["canvas_example"] = canvas_figure(trajs[default], batch=example)

    # 2. causal test: is the list placed from the drafted states?
    for name in ctx.progress(list(settings), desc="canvas patching: sampler settings"):
        flips = sampled_flips(diff, COMPOSE_ODD, n_causal, ctx.seed, max_flip_steps, key="compose-odd",
                              **settings[name])
        numbers["causal"][name] = {"steps_patched": len(flips.steps), "shifts": _shift_numbers(flips, region)}
        figures[f"canvas_flips_step_{slug(name)}"] = flips.figure(f"flip rate (patched step), {name}", at="step")

    # 2b. is the list read off the drafted states?
    pool = COMPOSE_ODD.problems("test", 4 * n_pairs + 8, seed=ctx.seed)
    pairs = compose_pairs(n_pairs, seed=ctx.seed, pool=pool, same_maps=True, model=COMPOSE_ODD_MODEL)
    for name in ctx.progress(list(settings), desc="list patching: sampler settings"):
        numbers["list_test"][name] = _list_test(diff, pairs, ctx.seed, **settings[name])

    # 3. IIA of the drafted suffix c6..c9
    hyps = hypotheses()
    headline = next(h for h in hyps if h.name == HEADLINE)
    iia_rows = []
    numbers["iia"][default], _, scores, rnd = iia_entry(diff, pairs, hyps, headline, seed=ctx.seed, draws=draws,
                                                        **settings[default])
    if scores is not None:
        iia_rows += [(f"{k} [{default}]", v) for k, v in scores.items()]
        iia_rows.append((f"random sites, {headline.name} [{default}]", rnd))
    ar_pool = correct_pool(ar, COMPOSE_ODD.problems("test", n_pool, seed=ctx.seed + 1), ctx.seed, do_sample=False)
    numbers["ar_pool"] = {"n": n_pool, "correct": len(ar_pool)}
    if ar_pool:
        ar_hyps = [link_at(6, ch, "all", span=N - 6, compare="chain", model=COMPOSE_ODD_MODEL) for ch in ("canvas", "L0")]
        numbers["iia"][AR_TWIN], _, s_ar, rnd_ar = iia_entry(ar, compose_pairs(n_pairs, seed=ctx.seed, pool=ar_pool,
                                                                               same_maps=True, model=COMPOSE_ODD_MODEL),
                                                             ar_hyps, ar_hyps[1], seed=ctx.seed, draws=draws,
                                                             do_sample=False)
        if s_ar is not None:
            iia_rows += [(f"{k} AR twin", v) for k, v in s_ar.items()]
            iia_rows.append((f"random sites, {ar_hyps[1].name} AR twin", rnd_ar))
    else:
        numbers["iia"][AR_TWIN] = {"error": f"the AR twin answered no held-out problem correctly (of {n_pool})"}
    numbers["iia_rows"] = [(label, r.to_dict()) for label, r in iia_rows]
    if iia_rows:
        figures["iia"] = iia_figure(iia_rows, "drafted suffix -> the states to its left: IIA (95% Wilson CI)")
    return numbers, figures


def run(ctx: StudyContext) -> Report:
    numbers, figures = compute(ctx)
    return Report(TITLE, render(numbers), figures, numbers)
