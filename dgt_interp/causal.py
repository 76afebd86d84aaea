"""Causal abstraction: a high-level algorithm as code, aligned to sites, scored by interchange interventions.

A **hypothesis** is a high-level causal model (`CausalModel`: named variables computed from a
problem, in order, ending in the answer) plus an **alignment** of some of its variables to sites of
the network (`dgt_interp.patching.Site`: hook name with the layer, denoising step, position — or the
self-conditioning channel `self_cond.hook_logits_in` at a step). Its algorithmic-transparency
score is the **interchange-intervention accuracy** (IIA, Geiger et al.): over pairs (base b,
source s), the fraction where the network run on b with the aligned sites patched from the run on
s (replayed sampler noise, `dgt_interp.patching`) emits exactly the answer the causal model gives on
b with the variables set to their values on s. Reported with a 95% Wilson interval, on all pairs and
on the *informative* pairs (where that counterfactual answer differs from b's own answer: only there
does a patch that does nothing fail), next to baselines: randomly chosen sites of the same shape,
and the same hypothesis on the AR twin.

    >>> hyp = Hypothesis("carry@L2", model=ADDITION_MODEL, variables=("c2",), sites=lambda ctx: [...])
    >>> res = interchange_accuracy(model, hyp, pairs, seed=0)      # IIAResult
    >>> base = random_site_baseline(model, hyp, pairs, draws=8)    # same number of random sites

Anys are any objects with `.prompt` and `.answer` strings (a task's `Any`s); prompts and
answers go through the model's own tokenizer (`dgt_interp.tokenizer`).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

from dgt_interp.errors import DgtInterpError
from dgt_interp.patching import Patching, Site
from dgt_interp.stats import wilson_interval
from dgt_interp.tokenizer import decode_until_eos, load_tokenizer, prompt_batch


class CaseStudyError(DgtInterpError, ValueError):
    """Bad case-study or hypothesis input (one-line message that says what to do)."""


@dataclass(frozen=True)
class CausalModel:
    """A high-level algorithm as named variables, each a function of the values computed before it.

    `inputs(problem) -> dict` gives the input variables; `variables` (in topological order) maps a
    name to `fn(values) -> value`; `output` names the variable holding the answer string.
    `run(problem, interventions)` computes every variable, taking intervened ones as given.
    """

    inputs: Callable[[Any], dict]
    variables: dict[str, Callable[[dict], Any]]
    output: str

    def run(self, problem: Any, interventions: dict | None = None) -> dict:
        values = dict(self.inputs(problem))
        values.update({k: v for k, v in (interventions or {}).items() if k in values})
        for name, fn in self.variables.items():
            values[name] = interventions[name] if interventions and name in interventions else fn(values)
        return values

    def counterfactual(self, base: Any, source: Any, names: Sequence[str]) -> str:
        """The output on `base` with variables `names` set to their values on `source`."""
        unknown = [n for n in names if n not in self.variables and n not in self.inputs(base)]
        if unknown:
            raise CaseStudyError(f"unknown high-level variables {unknown}; known: {', '.join(self.variables)}")
        src = self.run(source)
        return self.run(base, {n: src[n] for n in names})[self.output]


@dataclass(frozen=True)
class SiteContext:
    """What an alignment may depend on: model kind ("diffusion" | "ar"), prompt length (padded),
    canvas length, layers, and the steps both runs reached."""

    kind: str
    prompt_length: int
    canvas_length: int
    n_layers: int
    n_steps: int


@dataclass(frozen=True)
class Hypothesis:
    """High-level variables `variables` of `model` live at `sites(ctx) -> [Site]` (interchanged together).

    `output_positions`: compare only these characters of the answer (e.g. the digit the variable
    feeds directly); None = the whole answer (the standard IIA).
    """

    name: str
    model: CausalModel
    variables: tuple[str, ...]
    sites: Callable[[SiteContext], list]
    description: str = ""
    output_positions: tuple[int, ...] | None = None

    def matches(self, output: str, expected: str) -> bool:
        """Does the network's output agree with the causal model's (on `output_positions`)?"""
        if self.output_positions is None:
            return output == expected
        return all(p < len(output) and p < len(expected) and output[p] == expected[p] for p in self.output_positions)


# ---------------------------------------------------------------------------------------------
# interchange-intervention accuracy
# ---------------------------------------------------------------------------------------------


@dataclass
class IIAResult:
    """IIA of one hypothesis (or site set) on one model; `*_informative` over pairs whose counterfactual
    answer differs from the base's own answer. `n_pairs_dropped`: pairs the model got wrong unpatched."""

    name: str
    kind: str
    sites: list[str]
    n: int
    correct: int
    iia: float
    ci95: tuple[float, float]
    n_informative: int
    correct_informative: int
    iia_informative: float
    ci95_informative: tuple[float, float]
    n_pairs_dropped: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def site_label(site) -> str:
    return f"{site.name}@step={site.step},pos={site.pos}" + (f",head={site.head}" if site.head is not None else "")


class PairRuns:
    """Base and source runs of (base, source) pairs under one `Patching` (source = clean, base = corrupted).

    Keeps only pairs the model answers correctly on both sides (unpatched), so a failure of the
    counterfactual is the intervention's. `outputs(patches)` gives decoded answers per patch.
    """

    def __init__(self, model, pairs: Sequence[tuple[Any, Any]], *, tokenizer=None, seed: int = 0,
                 filter_correct: bool = True, **generation_kwargs):
        if not pairs:
            raise CaseStudyError("no (base, source) pairs; sample some with the study's pair sampler")
        self.model, self.seed = model, seed
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model)
        batch = prompt_batch([b.prompt for b, _ in pairs] + [s.prompt for _, s in pairs], self.tokenizer)
        n = len(pairs)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        self.p = Patching(model, ids[n:], ids[:n], seed=seed, attention_mask=mask[n:], corrupted_attention_mask=mask[:n],
                          **generation_kwargs)
        base_ans = [self.decode(r) for r in self.p.corrupted.outputs()[1]]
        src_ans = [self.decode(r) for r in self.p.clean.outputs()[1]]
        ok = [(b.answer == a and s.answer == c) if filter_correct else True
              for (b, s), a, c in zip(pairs, base_ans, src_ans)]
        self.keep = torch.tensor(ok)
        self.pairs = [pr for pr, k in zip(pairs, ok) if k]
        self.dropped = n - len(self.pairs)
        self.base_answers = [a for a, k in zip(base_ans, ok) if k]
        text = model.config.get_text_config()
        self.ctx = SiteContext(self.p.kind, ids.shape[1], int(self.p.corrupted.records["input_canvas"].shape[-1]),
                               text.num_hidden_layers, self.p.n_steps)

    def outputs(self, patches: Sequence, *, batch_size: int = 32, progress: bool = False) -> list[list[str]]:
        """Per patch (a Site or list of Sites), the decoded answers of the kept pairs."""
        toks = self.p.patched_tokens(list(patches), batch_size=batch_size, progress=progress)
        keep = torch.nonzero(self.keep).flatten()
        return [[self.decode(t[i]) for i in keep.tolist()] for t in toks]

    def decode(self, ids) -> str:
        """The answer text of generated ids (up to EOS) through the model's tokenizer."""
        return decode_until_eos(self.tokenizer, ids)

    def score(self, name: str, sites: list, answers: list[str], expected: list[str],
              hypothesis: Hypothesis | None = None) -> IIAResult:
        match = hypothesis.matches if hypothesis is not None else (lambda a, e: a == e)
        hits = [match(a, e) for a, e in zip(answers, expected)]
        info = [e != b for e, b in zip(expected, self.base_answers)]
        n, c = len(hits), sum(hits)
        ni, ci = sum(info), sum(h for h, i in zip(hits, info) if i)
        return IIAResult(name, self.ctx.kind, [site_label(s) for s in sites], n, c, c / n if n else float("nan"),
                         wilson_interval(c, n), ni, ci, ci / ni if ni else float("nan"), wilson_interval(ci, ni),
                         self.dropped)


def expected_answers(hypothesis: Hypothesis, pairs: Sequence[tuple[Any, Any]]) -> list[str]:
    """The causal model's counterfactual answer for each (base, source) pair."""
    return [hypothesis.model.counterfactual(b, s, hypothesis.variables) for b, s in pairs]


def interchange_accuracy(model, hypothesis: Hypothesis, pairs=None, *, runs: PairRuns | None = None, seed: int = 0,
                         batch_size: int = 32, **generation_kwargs) -> IIAResult:
    """IIA of `hypothesis` on `model` over `pairs` (or reuse `runs`, a `PairRuns` of those pairs)."""
    runs = runs or PairRuns(model, pairs, seed=seed, **generation_kwargs)
    sites = list(hypothesis.sites(runs.ctx))
    if not runs.pairs:
        raise CaseStudyError("the model got every pair wrong unpatched; check the model and the task")
    answers = runs.outputs([sites], batch_size=batch_size)[0]
    return runs.score(hypothesis.name, sites, answers, expected_answers(hypothesis, runs.pairs), hypothesis)


def random_sites(runs: PairRuns, like: list, rng: random.Random) -> list:
    """Sites of the same shape as `like`: each site's layer (in its name), int step and int position
    redrawn uniformly among those where the hook fires (None = all steps/positions is kept)."""
    out = []
    for site in like:
        name = site.name
        if re.search(r"blocks\.\d+\.", name):
            name = re.sub(r"blocks\.\d+\.", f"blocks.{rng.randrange(runs.ctx.n_layers)}.", name, count=1)
        step = site.step
        for _ in range(100):
            step = rng.randrange(runs.ctx.n_steps) if isinstance(site.step, int) else site.step
            probe = step if isinstance(step, int) else _first_firing(runs, name)
            if runs.p.positions(name, probe) > 0:
                break
        pos = site.pos
        if isinstance(site.pos, int):
            n_pos = runs.p.positions(name, step if isinstance(step, int) else _first_firing(runs, name))
            pos = rng.randrange(max(n_pos, 1))
        out.append(Site(name, step, pos, site.head))
    return out


def _first_firing(runs: PairRuns, name: str) -> int:
    """The first step where hook `name` fires (self-conditioning is absent at step 0); 0 if none."""
    return next((s for s in range(runs.ctx.n_steps) if runs.p.positions(name, s) > 0), 0)


@dataclass
class BaselineResult:
    """IIA of `draws` random site sets of the hypothesis's shape: mean and each draw."""

    draws: list[IIAResult]

    @property
    def mean_iia_informative(self) -> float:
        v = [d.iia_informative for d in self.draws if not math.isnan(d.iia_informative)]
        return sum(v) / len(v) if v else float("nan")

    @property
    def mean_iia(self) -> float:
        return sum(d.iia for d in self.draws) / len(self.draws) if self.draws else float("nan")

    def to_dict(self) -> dict:
        return {"mean_iia": self.mean_iia, "mean_iia_informative": self.mean_iia_informative,
                "draws": [d.to_dict() for d in self.draws]}


def random_site_baseline(model, hypothesis: Hypothesis, pairs=None, *, runs: PairRuns | None = None, draws: int = 8,
                         seed: int = 0, batch_size: int = 32, progress: bool = False,
                         **generation_kwargs) -> BaselineResult:
    """IIA of `draws` random site sets with the hypothesis's shape (`random_sites`), batched."""
    runs = runs or PairRuns(model, pairs, seed=seed, **generation_kwargs)
    rng = random.Random(f"random-sites:{seed}")
    like = list(hypothesis.sites(runs.ctx))
    site_sets = [random_sites(runs, like, rng) for _ in range(draws)]
    expected = expected_answers(hypothesis, runs.pairs)
    outs = runs.outputs(site_sets, batch_size=batch_size, progress=progress)
    return BaselineResult([runs.score(f"random #{i}", s, o, expected, hypothesis)
                           for i, (s, o) in enumerate(zip(site_sets, outs))])

__all__ = [
    "CaseStudyError", "CausalModel", "SiteContext", "Hypothesis", "IIAResult", "PairRuns", "expected_answers",
    "interchange_accuracy", "random_sites", "BaselineResult", "random_site_baseline", "site_label",
]
