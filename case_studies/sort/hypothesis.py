"""The sort study's hypotheses as code: two algorithms for sorting digits, aligned to sites.

Problems: 2-7 digits, prompt `<bos>3142>`, answer `1234` at canvas positions 0..n-1, EOS at n
(`dgt_interp.tasks.SORT`). Prompts of different lengths share one batch (left padding), so canvas
position i means answer digit i in every row.

`RANK_MODEL` (the algorithm that needs no earlier output): count each digit value, accumulate,
read off the order statistics:
    c_v = #{j: x_j = v},  C_v = c_0 + ... + c_v  (v = 0..9, each from the counts),  n = C_9,
    o_i = min{v : C_v > i}  (the i-th smallest digit, i < n),   answer = o_0 o_1 ... o_{n-1}.
Setting o_i from a source changes digit i only (the answer may then be unsorted); setting C_v moves
the boundary between the runs of v and v+1.

`SUCCESSOR_MODEL` (the algorithm an AR sorter can use): each digit follows from the one before it,
    o_0 = min(x);  p_i = o_{i-1} (the previous token as read);  o_i = succ(p_1..p_i)
where succ repeats p_i while the input has more copies of it than p_1..p_i hold, else gives the
smallest input digit > p_i (none: the answer ends). Setting p_i from a source re-runs the chain from
there: base 13579 with p_2 := 6 gives 1379. On unintervened problems both models sort.

Alignments (`Hypothesis.sites(ctx)`):
- `order_stat_at(i, where, steps)`: o_i lives at canvas position i, in `where` = the residual after
  block L (`blocks.L.hook_resid_post`), the self-conditioning channel (`self_cond.hook_logits_in`)
  or the canvas token itself (`hook_embed`), at `steps` = all denoising steps, the first only, or the
  later ones only. AR twin: the residual after block L at the position that predicts digit i
  (generation step i: the prompt's last position at step 0, the one new position after).
- `previous_token_at(i)`: p_i is the token read at the position before digit i: AR: the input
  embedding at generation step i; DiffusionGemma: the canvas token at position i-1, all steps.
  Under the rank model that patch changes nothing; under the successor model it re-routes the chain.
"""

from __future__ import annotations

import random

from case_studies.where import check_where, where_hook, where_tag
from dgt_interp.causal import CaseStudyError, CausalModel, Hypothesis, SiteContext
from dgt_interp.patching import Site
from dgt_interp.tasks import Problem
from dgt_interp.tasks.library import SORT_MAX_LEN, SORT_MIN_LEN

VALUES = range(10)
STEP_SETS = {"all": None, "first": 0, "later": slice(1, None)}


def _inputs(problem: Problem) -> dict:
    digits = problem.prompt.rstrip(">")
    if not digits.isdigit():
        raise CaseStudyError(f"{problem.prompt!r} is not a sort prompt like '3142>'")
    return {"x": tuple(int(c) for c in digits)}


def _answer(values: dict, n_max: int = SORT_MAX_LEN) -> str:
    out = []
    for i in range(n_max):
        o = values.get(f"o{i}")
        if o is None:
            break
        out.append(str(o))
    return "".join(out)


def _rank_variables() -> dict:
    v: dict = {}
    for val in VALUES:
        v[f"c{val}"] = (lambda val: lambda s: sum(d == val for d in s["x"]))(val)
    for val in VALUES:
        v[f"C{val}"] = (lambda val: lambda s: sum(s[f"c{u}"] for u in range(val + 1)))(val)
    v["n"] = lambda s: s["C9"]
    for i in range(SORT_MAX_LEN):
        v[f"o{i}"] = (lambda i: lambda s: next((u for u in VALUES if s[f"C{u}"] > i), None)
                      if i < s["n"] else None)(i)
    v["answer"] = _answer
    return v


RANK_MODEL = CausalModel(inputs=_inputs, variables=_rank_variables(), output="answer")


def successor(x: tuple[int, ...], read: list[int]) -> int | None:
    """The digit after the tokens `read` so far (last = the previous token): repeat it while `x` has
    more copies than `read` holds, else the smallest digit of `x` above it; None = the answer ends."""
    prev = read[-1]
    if x.count(prev) > read.count(prev):
        return prev
    bigger = [d for d in x if d > prev]
    return min(bigger) if bigger else None


def _successor_variables() -> dict:
    v: dict = {"o0": lambda s: min(s["x"])}
    for i in range(1, SORT_MAX_LEN):
        v[f"p{i}"] = (lambda i: lambda s: s[f"o{i - 1}"])(i)
        v[f"o{i}"] = (lambda i: lambda s: None if s[f"p{i}"] is None else
                      successor(s["x"], [s[f"p{k}"] for k in range(1, i + 1)]))(i)
    v["answer"] = _answer
    return v


SUCCESSOR_MODEL = CausalModel(inputs=_inputs, variables=_successor_variables(), output="answer")


COMPARE = ("answer", "digit", "next")


def _compared(i: int, compare: str) -> tuple[int, ...] | None:
    """Output positions a hypothesis is scored on: the whole answer, digit i, or digit i+1."""
    if compare not in COMPARE:
        raise CaseStudyError(f"compare must be one of {', '.join(COMPARE)}, got {compare!r}")
    return {"answer": None, "digit": (i,), "next": (i + 1,)}[compare]


def order_stat_at(i: int, where: int | str, steps: str = "all", compare: str = "answer",
                  model: CausalModel = RANK_MODEL) -> Hypothesis:
    """o_i (the i-th smallest digit) lives at canvas position i, in `where` (a layer's resid_post,
    "selfcond" or "canvas"), at `steps` ("all" | "first" | "later"). `compare`: score the whole
    answer, digit i only ("digit") or digit i+1 only ("next": where the two models part).
    AR twin: layer L's resid_post at generation step i (selfcond/canvas/steps have no AR analogue).
    `model=SUCCESSOR_MODEL`: the same sites, but the digits after i follow the successor chain from
    the patched digit (what a model that reads its own last digit would emit)."""
    if steps not in STEP_SETS:
        raise CaseStudyError(f"steps must be one of {', '.join(STEP_SETS)}, got {steps!r}")
    check_where(where)
    if where in ("selfcond", "canvas") and steps == "first":
        raise CaseStudyError(f"{where} at the first step is a no-op (no self-conditioning yet; the canvas is the "
                             "shared replayed noise); use steps='all' or 'later'")

    def sites(ctx: SiteContext):
        if ctx.kind == "ar":
            if not isinstance(where, int):
                raise CaseStudyError(f"the AR twin has no {where} site; align o_i to a layer")
            return [Site(f"blocks.{where}.hook_resid_post", step=i, pos=ctx.prompt_length - 1 if i == 0 else 0)]
        return [Site(where_hook(where), step=STEP_SETS[steps], pos=i)]

    label = {"selfcond": "self-conditioning channel", "canvas": "canvas token"}.get(
        where, f"resid_post of block {where}")
    tag = "" if model is RANK_MODEL else "[successor]"
    positions = _compared(i, compare)
    return Hypothesis(f"o{i}@{where_tag(where)}:{steps}{tag}/{compare}", model, (f"o{i}",), sites,
                      f"the {i}-th smallest digit = {label} at canvas position {i}, {steps} steps; compared on "
                      + ("the whole answer" if positions is None else f"digit {positions[0]} only"),
                      output_positions=positions)


def previous_token_at(i: int, model: CausalModel = SUCCESSOR_MODEL, compare: str = "answer") -> Hypothesis:
    """p_i (the previous token, read before digit i) lives in the token read there: AR: the input
    embedding at generation step i; DiffusionGemma: the canvas token at position i-1, all steps.
    With `model=RANK_MODEL` no variable is set: the prediction is the base answer (the patch is ignored)."""
    if not 1 <= i < SORT_MAX_LEN:
        raise CaseStudyError(f"previous-token sites exist for digits 1..{SORT_MAX_LEN - 1}, got {i}")

    def sites(ctx: SiteContext):
        if ctx.kind == "ar":
            return [Site("hook_embed", step=i, pos=0)]
        return [Site("hook_embed", step=None, pos=i - 1)]

    variables = (f"p{i}",) if model is SUCCESSOR_MODEL else ()
    tag = "successor" if model is SUCCESSOR_MODEL else "rank"
    positions = _compared(i, compare)
    return Hypothesis(f"p{i}@prev-token[{tag}]/{compare}", model, variables, sites,
                      f"the previous token before digit {i} is read from position {i - 1}; predicted by the "
                      f"{tag} model; compared on " + ("the whole answer" if positions is None else
                                                      f"digit {positions[0]} only"),
                      output_positions=positions)


def sample_problem(rng: random.Random, n: int | None = None, distinct: bool = False) -> Problem:
    """A sort problem of `n` digits (random 2-7 if None); `distinct`: no repeated digit."""
    n = rng.randint(SORT_MIN_LEN, SORT_MAX_LEN) if n is None else n
    digits = rng.sample(range(10), n) if distinct else [rng.randint(0, 9) for _ in range(n)]
    return Problem("".join(map(str, digits)) + ">", "".join(map(str, sorted(digits))))


def order_pairs(i: int, n_pairs: int, seed: int = 0) -> list[tuple[Problem, Problem]]:
    """(base, source) pairs of equal length > i + 1 whose i-th smallest digits differ and where, with o_i
    set from the source, the two models predict different digits i + 1 (rank: the base's; successor:
    the successor of the patched digit), so a "next" comparison can tell them apart."""
    if not 0 <= i < SORT_MAX_LEN - 1:
        raise CaseStudyError(f"order pairs exist for digits 0..{SORT_MAX_LEN - 2}, got {i}")
    rng = random.Random(f"sort-order-pairs:{i}:{seed}")
    out = []
    while len(out) < n_pairs:
        n = rng.randint(max(i + 2, SORT_MIN_LEN), SORT_MAX_LEN)
        base, src = sample_problem(rng, n), sample_problem(rng, n)
        if base.answer[i] == src.answer[i]:
            continue
        succ = SUCCESSOR_MODEL.counterfactual(base, src, [f"o{i}"])
        if len(succ) > i + 1 and succ[i + 1] != base.answer[i + 1]:
            out.append((base, src))
    return out


def previous_token_pairs(i: int, n_pairs: int, seed: int = 0) -> list[tuple[Problem, Problem]]:
    """(base, source) pairs with digit i-1 present in both and differing, whose successor counterfactual
    (the chain re-run from the source's digit i-1) fits the canvas and has a digit i other than the
    base's (so digit i alone tells the successor model from the rank model)."""
    rng = random.Random(f"sort-prev-pairs:{i}:{seed}")
    out = []
    while len(out) < n_pairs:
        base = sample_problem(rng, rng.randint(max(i + 1, SORT_MIN_LEN), SORT_MAX_LEN))
        src = sample_problem(rng, rng.randint(max(i, SORT_MIN_LEN), SORT_MAX_LEN))
        if base.answer[i - 1] == src.answer[i - 1]:
            continue
        values = SUCCESSOR_MODEL.run(base, {f"p{i}": SUCCESSOR_MODEL.run(src)[f"p{i}"]})
        cf = values["answer"]
        read = [values[f"p{k}"] for k in range(1, len(cf))] + [int(cf[-1])] if cf else []
        too_long = len(cf) == SORT_MAX_LEN and successor(values["x"], read) is not None
        if len(cf) > i and cf[i] != base.answer[i] and not too_long:
            out.append((base, src))
    return out
