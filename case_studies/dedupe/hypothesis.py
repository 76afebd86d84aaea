"""The dedupe study's hypotheses as code: is a token placed by reading its drafted left neighbour?

Problems (`dgt_interp.tasks.DEDUPE`): prompt `<bos>31337254=` (8-14 digits, 2-10 distinct), answer
`31725` = the distinct digits in first-occurrence order, then EOS. Canvas position j holds the j-th
distinct digit o_j; where a digit lands (j = the number of distinct digits before its first
occurrence) is not known to a shallow model in one pass, which is what token and sequence smearing
measure (`dgt_interp.phenomena`).

High-level causal models (`dgt_interp.causal.CausalModel`) over the input digits x, with variables
o_0, p_0, o_1, p_1, ... (o_j the j-th answer digit, p_j the index of its first occurrence in x):

- `SCAN_MODEL` (the left-to-right algorithm, placing each token from its left neighbour):
  o_{j+1} = the first digit after position p_j of x not already emitted, p_j = x.index(o_j). Setting
  o_j from a source moves the scan: every later token follows from where o_j first occurs in the base.
- `INDEPENDENT_MODEL` (each position computed from the input alone): the answer is the base's with o_j
  replaced; no later token moves.

`digit_at(where, model)` aligns o_J (J = `J`, the second answer digit) to canvas position J: the residual
after block L there, the self-conditioning channel there ("selfcond"), or the drafted token the decoder
reads there ("canvas", `hook_embed`), at every denoising step. AR twin: the residual at the position
that predicts o_J (generation step J), or the token o_J read at step J + 1.
"""

from __future__ import annotations

import random

from case_studies.where import check_where, where_hook, where_tag
from dgt_interp.causal import CaseStudyError, CausalModel, Hypothesis, SiteContext
from dgt_interp.patching import Site
from dgt_interp.tasks import DEDUPE, Problem

J = 1  # the answer position whose digit is interchanged (the second distinct digit)
MAX_DISTINCT = 10


def parse(problem: Problem) -> tuple[int, ...]:
    """The digits of a dedupe prompt like '31337254='."""
    body = problem.prompt[:-1] if problem.prompt.endswith("=") else ""
    if not body.isdigit():
        raise CaseStudyError(f"{problem.prompt!r} is not a dedupe prompt like '31337254='")
    return tuple(int(c) for c in body)


def _inputs(problem: Problem) -> dict:
    return {"x": parse(problem)}


def _next(v: dict, j: int):
    """o_j under the scan: the first digit after p_{j-1} not among o_0..o_{j-1} (None once the scan ends)."""
    if j == 0:
        return v["x"][0]
    p = v[f"p{j - 1}"]
    if p is None:
        return None
    seen = {v[f"o{i}"] for i in range(j)}
    return next((d for d in v["x"][p + 1:] if d not in seen), None)


def _pos(v: dict, j: int):
    o = v[f"o{j}"]
    return v["x"].index(o) if o is not None and o in v["x"] else None


def _answer(v: dict) -> str:
    out = []
    for j in range(MAX_DISTINCT):
        if v[f"o{j}"] is None:
            break
        out.append(str(v[f"o{j}"]))
    return "".join(out)


def _scan_variables() -> dict:
    var = {}
    for j in range(MAX_DISTINCT):
        var[f"o{j}"] = (lambda v, j=j: _next(v, j))
        var[f"p{j}"] = (lambda v, j=j: _pos(v, j))
    return var


SCAN_MODEL = CausalModel(inputs=_inputs, variables={**_scan_variables(), "answer": _answer}, output="answer")


def _independent_variables() -> dict:
    """o_j from the input alone (the j-th distinct digit), whatever the other positions hold."""
    return {f"o{j}": (lambda v, j=j: _distinct(v["x"])[j] if j < len(_distinct(v["x"])) else None)
            for j in range(MAX_DISTINCT)}


def _distinct(x) -> list[int]:
    return list(dict.fromkeys(x))


INDEPENDENT_MODEL = CausalModel(inputs=_inputs, variables={**_independent_variables(), "answer": _answer},
                                output="answer")
MODELS = {"scan": SCAN_MODEL, "independent": INDEPENDENT_MODEL}


def digit_at(where: int | str, model: str = "scan") -> Hypothesis:
    """o_J lives at canvas position J in `where` (a layer index, "selfcond" or "canvas"), all steps;
    predictions from `model` ("scan" | "independent"), compared on the whole answer."""
    if model not in MODELS:
        raise CaseStudyError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    check_where(where)

    def sites(ctx: SiteContext):
        if ctx.kind == "ar":
            if where == "canvas":
                return [Site("hook_embed", step=J + 1, pos=0)]  # o_J, read when writing o_{J+1}
            layer = where if isinstance(where, int) else ctx.n_layers - 1
            return [Site(f"blocks.{layer}.hook_resid_post", step=J, pos=0)]  # the position predicting o_J
        return [Site(where_hook(where), step=None, pos=J)]

    label = {"selfcond": "self-conditioning channel", "canvas": "drafted token read"}.get(where,
                                                                                      f"resid_post of block {where}")
    return Hypothesis(f"o{J}@{where_tag(where)}[{model}]", MODELS[model], (f"o{J}",), sites,
                      f"the answer's digit {J} = {label} at canvas position {J}, all steps; predicted by the "
                      f"{model} model")


def dedupe_pairs(n_pairs: int, seed: int = 0) -> list[tuple[Problem, Problem]]:
    """(base, source) pairs where the source's o_J occurs in the base's input, differs from the base's o_J
    and is not already emitted before J (so the scan model's counterfactual is a dedupe-like answer that
    differs from the base's), both with at least J + 2 distinct digits."""
    rng = random.Random(f"dedupe-pairs:{seed}")
    out = []
    while len(out) < n_pairs:
        base, src = DEDUPE.sample(rng), DEDUPE.sample(rng)
        b, s = _distinct(parse(base)), _distinct(parse(src))
        if len(b) < J + 2 or len(s) < J + 2:
            continue
        d = s[J]
        if d in parse(base) and d != b[J] and d not in b[:J]:
            out.append((base, src))
    return out


__all__ = ["J", "parse", "SCAN_MODEL", "INDEPENDENT_MODEL", "MODELS", "digit_at", "dedupe_pairs"]
