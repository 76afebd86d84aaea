"""The smearing study's hypotheses as code: does the count decide where the list tokens land?

Count answers vary in length (`3:753` vs `5:73564`), so a position in the canvas does not know in
advance which list token it will hold: that uncertainty is what token and sequence smearing
measure (`dgt_interp.phenomena`). The hypotheses here say *what* decides the placement.

Variable: the count n (`case_studies.count_common`), aligned by `count_at(where)` to canvas position 0
(the count character): the residual after block L there, the self-conditioning channel there, or
the count token the decoder reads there (`hook_embed`: the written count as context), at every
denoising step. AR twin: the residual after block L at the position that predicts the count
(generation step 0, the prompt's last position), or the count token read at step 1.

Three high-level models make different predictions for the same patch (n := the source's count):
- "independent" (`COUNT_MODEL`): the list does not depend on n; only the count character changes;
- "left" (`LEFT_MODEL`): n list slots, filled by rank from the start; EOS lands at 2 + n;
- "right" (`RIGHT_MODEL`): n slots filled by rank from the end (every token shifts with n).
Compared on the whole answer, or only on where EOS lands (`compare="length"`: left = right there).
"""

from __future__ import annotations

from case_studies.count_common import (
    COUNT_MODEL,
    COUNT_POS,
    LEFT_MODEL,
    RIGHT_MODEL,
    CountHypothesis,
    count_pairs,
)
from case_studies.where import check_where, where_hook, where_tag
from dgt_interp.causal import CaseStudyError, SiteContext
from dgt_interp.patching import Site

MODELS = {"independent": COUNT_MODEL, "left": LEFT_MODEL, "right": RIGHT_MODEL}


def count_at(where: int | str, model: str = "left", compare: str = "answer") -> CountHypothesis:
    """n lives at the count position in `where` (a layer index, "selfcond" or "canvas"), all steps;
    predictions from `model` ("independent" | "left" | "right"), compared on `compare`."""
    if model not in MODELS:
        raise CaseStudyError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    check_where(where)

    def sites(ctx: SiteContext):
        if ctx.kind == "ar":
            if where == "canvas":
                return [Site("hook_embed", step=1, pos=0)]  # the count token, read when writing ':'
            layer = where if isinstance(where, int) else ctx.n_layers - 1
            return [Site(f"blocks.{layer}.hook_resid_post", step=0, pos=ctx.prompt_length - 1)]
        return [Site(where_hook(where), step=None, pos=COUNT_POS)]

    label = {"selfcond": "self-conditioning channel", "canvas": "count token read"}.get(where,
                                                                                     f"resid_post of block {where}")
    return CountHypothesis(f"n@{where_tag(where)}[{model}]/{compare}", MODELS[model], ("n",), sites,
                           f"the count = {label} at canvas position 0, all steps; predicted by the {model} model; "
                           f"compared on the {compare}", compare=compare)


def smearing_pairs(n_pairs: int, seed: int = 0):
    """(base, source) pairs with non-empty lists and different counts (`count_common.count_pairs`)."""
    return count_pairs(n_pairs, seed, tag="smearing")


__all__ = ["MODELS", "count_at", "smearing_pairs"]
