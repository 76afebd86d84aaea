"""Helpers shared by the chain studies (hop_chain, suffix_sum) and the studies that patch the canvas.

A chain task writes its answer last link first: the rightmost answer digit needs one step of work, each
digit to its left one more, so a shallow DiffusionGemma must draft the right end first and compute leftwards
from its own drafts. These helpers measure that: a random-order baseline for commit order, the flip rates of
`canvas_flips` by offset (patched position q, affected position p), how often an induced wrong draft is
corrected by the end, interchange scoring with one patched run per distinct site set, the step-k reading of a
patch, and the training record of a zoo model.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from pathlib import Path

import torch

from case_studies.common_report import f3, interval, rate
from dgt_interp import zoo
from dgt_interp.causal import PairRuns, expected_answers, random_site_baseline
from dgt_interp.evaluate import generate_answers, prompt_batch
from dgt_interp.phenomena import canvas_flips
from dgt_interp.stats import bootstrap_interval, spearman
from dgt_interp.tasks import EOS_ID

EXACT_ORDERS = 6  # rows of at most this many positions average over every order; longer rows sample orders


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _orders(n: int, draws: int, rng: random.Random) -> list[list[int]]:
    if n <= EXACT_ORDERS:
        return [list(p) for p in itertools.permutations(range(n))]
    out = []
    for _ in range(draws):
        p = list(range(n))
        rng.shuffle(p)
        out.append(p)
    return out


def right_to_left(row) -> bool:
    """Committed right to left: no position commits before the one to its right, and not all at once."""
    row = [float(x) for x in row]
    return all(row[i] >= row[i + 1] for i in range(len(row) - 1)) and max(row) > min(row)


def strictly_right_to_left(row) -> bool:
    """Each position commits after the one to its right (no two at the same step)."""
    row = [float(x) for x in row]
    return all(row[i] > row[i + 1] for i in range(len(row) - 1))


def random_order(commit_steps: torch.Tensor, *, order=strictly_right_to_left, draws: int = 200, seed: int = 0) -> dict:
    """The random-order baseline of `commit_steps` `[rows, positions]`: each row's commit steps assigned to its
    positions in every order (rows longer than `EXACT_ORDERS`: `draws` random orders), averaged per row. Gives
    the mean Spearman rho (over rows with an order) and the fraction of orders passing `order`
    (`fraction_right_to_left`), each with a bootstrap 95% interval over rows."""
    rng = random.Random(f"random-order:{seed}")
    rhos, rtl = [], []
    pos = torch.arange(commit_steps.shape[1]).float()
    for row in commit_steps:
        perms = [row[o] for o in _orders(len(row), draws, rng)]
        r = [x for x in (spearman(p, pos) for p in perms) if x == x]
        if r:
            rhos.append(_mean(r))
        rtl.append(_mean([float(order(p)) for p in perms]))
    return {"mean_rho": _mean(rhos) if rhos else float("nan"),
            "ci95_rho": list(bootstrap_interval(rhos, _mean, seed=0)),
            "fraction_right_to_left": _mean(rtl) if rtl else float("nan"),
            "ci95_right_to_left": list(bootstrap_interval(rtl, _mean, seed=0))}


# Where the affected position p sits relative to the patched one q (d = p - q).
NEIGHBOURS = {"right neighbour (q+1)": lambda d: d == 1, "left neighbour (q-1)": lambda d: d == -1,
              "random sites (|p-q| >= 2)": lambda d: abs(d) >= 2}


def neighbour_rates(flips, seed: int, *, at: str = "final", positions=None) -> dict:
    """Flip rate of position p when the canvas at q is patched (`CanvasFlips`), pooled over (step, q, row)
    events where the patch changed the input and p is an answer position (and in `positions`, if given), by
    where p sits: the patched position's right neighbour (p = q + 1), its left neighbour (p = q - 1), or two
    or more away (random sites).
    `at`: "final" (the emitted token) or "step" (the argmax of the patched step). Bootstrap 95% intervals
    over rows."""
    f = flips.step_flips if at == "step" else flips.flips  # [K, Q, B, L]
    patched, mask = flips.patched, flips.mask
    k_n, q_n, b_n, l_n = f.shape
    ps = range(l_n) if positions is None else positions
    per_row = {c: [[0, 0] for _ in range(b_n)] for c in NEIGHBOURS}
    for qi, q in enumerate(flips.positions):
        for p in ps:
            for c, ok in NEIGHBOURS.items():
                if not ok(p - q):
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
                "ci95": list(bootstrap_interval(rows, ratio, seed=seed))} for c, rows in per_row.items()}


def _rows(flips, rows: list[int]):
    """`flips` restricted to batch rows `rows` (for a bootstrap over rows)."""
    idx = torch.tensor(rows, dtype=torch.long)
    return dataclasses.replace(
        flips, flips=flips.flips[:, :, idx], patched=flips.patched[:, :, idx], mask=flips.mask[idx],
        base_final=flips.base_final[idx], step_flips=None if flips.step_flips is None else flips.step_flips[:, :, idx],
        step_argmax=None)


def order_effects(flips, seed: int, *, at: str = "step") -> dict:
    """`CanvasFlips.later_on_earlier(at)` (the effect of patching q on p, max over steps, averaged over q > p and
    over q < p) with percentile-bootstrap 95% intervals over rows, and of their difference."""
    rows = list(range(flips.flips.shape[2]))

    def stat(key):
        def f(sample):
            e = _rows(flips, sample).later_on_earlier(at)
            return e["later_on_earlier"] - e["earlier_on_later"] if key == "difference" else e[key]
        return f

    point = flips.later_on_earlier(at)
    out = {"later_on_earlier": point["later_on_earlier"], "earlier_on_later": point["earlier_on_later"],
           "difference": point["later_on_earlier"] - point["earlier_on_later"]}
    for key in ("later_on_earlier", "earlier_on_later", "difference"):
        out[f"{key}_ci95"] = list(bootstrap_interval(rows, stat(key), seed=seed, draws=200))
    return out


def sampled_flips(model, task, n: int, seed: int, first_steps: int, *, key: str | None = None, **gen):
    """`phenomena.canvas_flips` (canvas token and self-conditioning logits) of `n` problems drawn from `task`,
    sources drawn independently (rng keyed by `key`, default the task's name), over the first `first_steps` steps
    both runs reach. The task's prompts must share one length (no padding)."""
    rng = random.Random(f"{key or task.name}-flips:{seed}")
    base = [task.sample(rng) for _ in range(n)]
    src = [task.sample(rng) for _ in range(n)]
    ids = prompt_batch([p.prompt for p in base] + [p.prompt for p in src])["input_ids"]
    return canvas_flips(model, ids[:n], ids[n:], first_steps=first_steps, channels=("canvas", "self_cond"),
                        eos_id=EOS_ID, seed=seed, batch_size=32, **gen)


def corrected_drafts(flips, *, offset: int = 1, positions=None) -> dict:
    """Retroactive self-correction of induced drafts: over events where patching q = p + `offset` changed the
    argmax the patched step emits at p (a wrong draft at p that the model wrote from the patched context),
    how often p's final token is nevertheless the unpatched run's (corrected by a later step). A `rate()`."""
    ps = range(flips.flips.shape[-1]) if positions is None else positions
    k = n = 0
    for qi, q in enumerate(flips.positions):
        p = q - offset
        if p not in ps:
            continue
        drafted = flips.step_flips[:, qi, :, p] & flips.patched[:, qi, :] & flips.mask[None, :, p]  # [K, B]
        n += int(drafted.sum())
        k += int((drafted & ~flips.flips[:, qi, :, p]).sum())
    return rate(k, n)


def score_hypotheses(runs, hyps) -> dict:
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


def iia_entry(model, pairs, hyps, headline, *, seed: int, draws: int, **gen) -> tuple[dict, object, dict, object]:
    """Score `hyps` on `pairs` (one `PairRuns`: pairs the model answers unpatched) with the random-site baseline
    of `headline`'s shape. Returns (the study's numbers entry, the runs, {name: IIAResult}, the baseline);
    the entry says why and the last two are None when the model answered no pair correctly."""
    runs = PairRuns(model, pairs, seed=seed, **gen)
    if not runs.pairs:
        return {"error": "the model answered no pair correctly unpatched", "dropped": runs.dropped}, runs, None, None
    scores = score_hypotheses(runs, hyps)
    rnd = random_site_baseline(model, headline, runs=runs, draws=draws, seed=seed, batch_size=32)
    entry = {"pairs_kept": len(runs.pairs), "dropped": runs.dropped, "n_steps": runs.ctx.n_steps,
             "hypotheses": {k: v.to_dict() for k, v in scores.items()}, "random_sites": rnd.to_dict()}
    return entry, runs, scores, rnd


def step_effect(runs, site_sets, step: int, pos: int, want: torch.Tensor) -> list[dict]:
    """Per site set: how often the argmax at canvas position `pos` right after `step` (the step that reads the
    patch) is `want` (`[kept pairs]` token ids: the counterfactual), over the kept pairs; [0] the unpatched base."""
    keep = torch.nonzero(runs.keep).flatten()
    base = runs.p.corrupted.records["argmax_canvas"][step][keep, pos]
    out = [rate(int((base == want).sum()), len(keep))]
    batch = runs.p.batch
    for _, n, traj in runs.p.iter_runs(site_sets, record=(), batch_size=32):
        am = traj.records["argmax_canvas"][step]
        for i in range(n):
            got = am[i * batch:(i + 1) * batch][keep, pos]
            out.append(rate(int((got == want).sum()), len(keep)))
    return out


def correct_pool(model, problems, seed, **gen) -> list:
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
    parents, p = [], r.get("parent_recipe")
    while p:  # a model trained on from another: its parents' steps, first trained first
        parents.insert(0, p["train_config"]["steps"])
        p = p.get("parent_recipe")
    return {"steps": r["train_config"]["steps"], **({"parent_steps": parents} if parents else {}), "batch_size": r["train_config"]["batch_size"],
            "layers": r["train_config"]["size"]["num_hidden_layers"], "final_loss": r.get("final_loss"),
            "heldout_accuracy": acc.get("accuracy"), "heldout_ci95": acc.get("ci95"), "heldout_n": acc.get("n"),
            "learning_curve": r.get("learning_curve", [])}


def training_lines(numbers) -> list[str]:
    """Report lines for `numbers["training"]` (`training()` per model kind)."""
    lines = []
    for kind, label in (("diffusion", "DiffusionGemma"), ("ar", "AR twin")):
        t = numbers["training"].get(kind) or {}
        if not t:
            continue
        curve = ", ".join(f"{p['step']}: {f3(p['heldout_exact_match'], 3)}" for p in t["learning_curve"])
        steps = " + ".join(str(x) for x in t.get("parent_steps", [])) + " + " if t.get("parent_steps") else ""
        lines.append(f"- {label}: {t['layers']} layers, {steps}{t['steps']} steps of batch {t['batch_size']}, final loss "
                     f"{f3(t['final_loss'])}, held-out exact match {interval(t['heldout_accuracy'], t['heldout_ci95'], 3)} "
                     f"(n = {t['heldout_n']})" + (f"; mid-training held-out exact match (n = 200) by step: {curve}."
                                                  if curve else "."))
    return lines


__all__ = ["EXACT_ORDERS", "NEIGHBOURS", "right_to_left", "strictly_right_to_left", "order_effects", "random_order", "neighbour_rates", "corrected_drafts",
           "sampled_flips", "score_hypotheses", "iia_entry", "step_effect", "correct_pool", "training", "training_lines"]
