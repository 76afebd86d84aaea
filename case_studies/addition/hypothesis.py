"""The addition study's hypothesis as code: schoolbook addition with carries, aligned to sites.

Problems: 4-digit + 4-digit with a 4-digit sum (prompt `<bos>abcd+efgh=`, 11 tokens; answer digits
at canvas positions 0..3, most significant first, EOS at 4), so every pair shares one layout.

High-level causal model (`ADDITION_MODEL`): columns j = 0 (ones) .. 3 (thousands);
    c0 = 0;  c_{j+1} = (a_j + b_j + c_j) >= 10;  s_j = (a_j + b_j + c_j) mod 10;  answer = s3 s2 s1 s0.
Hypothesis family `carry_at(j, site)`: the carry into column j (`c{j}`, j = 1..3) is the variable
held at `site`: the residual stream after block `layer` at the canvas position of answer digit j
(position 3 - j) at every denoising step, or the self-conditioning channel at that position. On the
AR twin the same variable is aligned to the residual at the position that predicts that digit
(generation step 3 - j; the prompt's last position at step 0, the single new position after).
`carry_at(j, layer, at="below")`: the same variable at answer digit j-1's canvas position instead (where
column j-1 is summed; DiffusionGemma only).
Pairs (`carry_pairs`): base and source agree on column j's digits and differ in c_j, so the
counterfactual answer changes digit j (and, through the carry out, maybe higher digits).
"""

from __future__ import annotations

import random

from dgt_interp.causal import CausalModel, Hypothesis, SiteContext
from dgt_interp.patching import Site
from dgt_interp.tasks import Problem

N_DIGITS = 4


def digits(x: int) -> list[int]:
    """Least significant first, N_DIGITS long."""
    return [(x // 10**j) % 10 for j in range(N_DIGITS)]


def _inputs(problem: Problem) -> dict:
    a, b = (int(t) for t in problem.prompt.rstrip("=").split("+"))
    return {**{f"a{j}": d for j, d in enumerate(digits(a))}, **{f"b{j}": d for j, d in enumerate(digits(b))}}


def _variables() -> dict:
    v = {"c0": lambda x: 0}
    for j in range(N_DIGITS):
        v[f"s{j}"] = (lambda j: lambda x: (x[f"a{j}"] + x[f"b{j}"] + x[f"c{j}"]) % 10)(j)
        v[f"c{j + 1}"] = (lambda j: lambda x: int(x[f"a{j}"] + x[f"b{j}"] + x[f"c{j}"] >= 10))(j)
    v["answer"] = lambda x: str(int(("1" if x[f"c{N_DIGITS}"] else "") + "".join(str(x[f"s{j}"]) for j in
                                                                                  reversed(range(N_DIGITS)))))
    return v


ADDITION_MODEL = CausalModel(inputs=_inputs, variables=_variables(), output="answer")


def answer_position(j: int) -> int:
    """Canvas position of answer digit j (column j) for a 4-digit answer, most significant first."""
    return N_DIGITS - 1 - j


def column_positions(j: int) -> list[int]:
    """Prompt positions of column j's digits (a_j, b_j) in `<bos>abcd+efgh=` (most significant first)."""
    return [N_DIGITS - j, 2 * N_DIGITS + 1 - j]


def carry_at(j: int, layer: int | None, local: bool = False, at: str = "own") -> Hypothesis:
    """Carry into column j lives in the residual after block `layer` (None: the self-conditioning
    channel) at the position of answer digit j, at every step (diffusion) / its generation step (AR).

    `local=False`: the network must then emit the whole counterfactual answer (the carry out of
    column j propagates to higher digits, as in the algorithm); `local=True`: only digit j is
    compared (the carry is used where it is held, whatever happens to higher digits).
    `at="below"` (DiffusionGemma, j >= 1, a layer): the carry is held at the canvas position of
    answer digit j-1 instead, where column j-1 is summed (and read across by attention). Patching
    there also moves digit j-1, so only `local=True` is a fair test.
    """
    if at not in ("own", "below"):
        raise ValueError(f"at={at!r}: use 'own' or 'below'")
    if at == "below" and (j < 1 or layer is None):
        raise ValueError("at='below' needs a column j >= 1 and a layer (the residual at digit j-1's position)")
    pos = answer_position(j) if at == "own" else answer_position(j - 1)

    def sites(ctx: SiteContext):
        if ctx.kind == "ar":
            if at == "below":
                raise ValueError("at='below' has no AR alignment: the twin writes digit j-1 after digit j")
            name = f"blocks.{layer if layer is not None else ctx.n_layers - 1}.hook_resid_post"
            return [Site(name, step=pos, pos=ctx.prompt_length - 1 if pos == 0 else 0)]
        if layer is None:
            return [Site("self_cond.hook_logits_in", step=None, pos=pos)]
        return [Site(f"blocks.{layer}.hook_resid_post", step=None, pos=pos)]

    where = "self-conditioning channel" if layer is None else f"resid_post of block {layer}"
    tag = f"c{j}@{'selfcond' if layer is None else f'L{layer}'}{':below' if at == 'below' else ''}" + \
        ("/digit" if local else "/answer")
    return Hypothesis(tag, ADDITION_MODEL, (f"c{j}",), sites,
                      f"carry into column {j} = {where} at canvas position {pos}"
                      + (" (digit j-1's)" if at == "below" else "") + ", all steps; compared on "
                      + (f"digit {j} only" if local else "the whole answer"),
                      output_positions=(answer_position(j),) if local else None)


def sample_problem(rng: random.Random) -> Problem:
    """4-digit + 4-digit with a 4-digit sum."""
    while True:
        a, b = rng.randint(1000, 8999), rng.randint(1000, 8999)
        if a + b < 10000:
            return Problem(f"{a}+{b}=", str(a + b))


def carry_pairs(j: int, n: int, seed: int = 0) -> list[tuple[Problem, Problem]]:
    """(base, source) pairs that share column j's digits and differ in the carry into column j."""
    rng = random.Random(f"carry-pairs:{j}:{seed}")
    out = []
    while len(out) < n:
        base = sample_problem(rng)
        vb = ADDITION_MODEL.run(base)
        for _ in range(200):
            src = sample_problem(rng)
            a, b = (int(t) for t in src.prompt.rstrip("=").split("+"))
            da, db = digits(a), digits(b)
            da[j], db[j] = vb[f"a{j}"], vb[f"b{j}"]
            a2, b2 = (int("".join(map(str, reversed(d)))) for d in (da, db))
            if a2 < 1000 or b2 < 1000 or a2 + b2 >= 10000:
                continue
            src = Problem(f"{a2}+{b2}=", str(a2 + b2))
            cf = ADDITION_MODEL.counterfactual(base, src, [f"c{j}"])
            if ADDITION_MODEL.run(src)[f"c{j}"] != vb[f"c{j}"] and len(cf) == N_DIGITS:
                out.append((base, src))
                break
    return out
