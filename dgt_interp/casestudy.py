"""Case studies: a task, a hypothesis written as code, and `run()` producing a report.

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

A **case study** (`CaseStudy`) is a name, a task, the zoo models it uses and `run(ctx) -> Report`;
`register(study)` adds it to the registry that `dgt-interp case-study list/run` reads. Studies in
`case_studies/<name>/` register on import; a study anywhere else is registered by importing its
file (`load_study(path)`, or pass the path as NAME on the command line). `Report.write(dir)` writes
`report.md`, one PNG per figure and `report.json`, each file atomically (JSON last).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import pkgutil
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from dgt_interp.atomic import save_figure, write_text
from dgt_interp.evaluate import wilson_interval
from dgt_interp.tasks import Problem, Task


class CaseStudyError(ValueError):
    """Bad case-study input (one-line message that says what to do)."""


# ---------------------------------------------------------------------------------------------
# the hypothesis: a high-level causal model aligned to sites
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CausalModel:
    """A high-level algorithm as named variables, each a function of the values computed before it.

    `inputs(problem) -> dict` gives the input variables; `variables` (in topological order) maps a
    name to `fn(values) -> value`; `output` names the variable holding the answer string.
    `run(problem, interventions)` computes every variable, taking intervened ones as given.
    """

    inputs: Callable[[Problem], dict]
    variables: dict[str, Callable[[dict], Any]]
    output: str

    def run(self, problem: Problem, interventions: dict | None = None) -> dict:
        values = dict(self.inputs(problem))
        values.update({k: v for k, v in (interventions or {}).items() if k in values})
        for name, fn in self.variables.items():
            values[name] = interventions[name] if interventions and name in interventions else fn(values)
        return values

    def counterfactual(self, base: Problem, source: Problem, names: Sequence[str]) -> str:
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


def _site_str(site) -> str:
    return f"{site.name}@step={site.step},pos={site.pos}" + (f",head={site.head}" if site.head is not None else "")


class PairRuns:
    """Base and source runs of (base, source) pairs under one `Patching` (source = clean, base = corrupted).

    Keeps only pairs the model answers correctly on both sides (unpatched), so a failure of the
    counterfactual is the intervention's. `outputs(patches)` gives decoded answers per patch.
    """

    def __init__(self, model, pairs: Sequence[tuple[Problem, Problem]], *, task: Task | None = None, seed: int = 0,
                 filter_correct: bool = True, **generation_kwargs):
        from dgt_interp.evaluate import prompt_batch
        from dgt_interp.patching import Patching, run_outputs
        from dgt_interp.tasks import decode_answer

        if not pairs:
            raise CaseStudyError("no (base, source) pairs; sample some with the study's pair sampler")
        self.model, self.seed = model, seed
        batch = prompt_batch([b.prompt for b, _ in pairs] + [s.prompt for _, s in pairs])
        n = len(pairs)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        self._decode = decode_answer
        self.p = Patching(model, ids[n:], ids[:n], seed=seed, attention_mask=mask[n:], corrupted_attention_mask=mask[:n],
                          **generation_kwargs)
        base_ans = [decode_answer(r) for r in run_outputs(self.p.corrupted)[1]]
        src_ans = [decode_answer(r) for r in run_outputs(self.p.clean)[1]]
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
        from dgt_interp.phenomena import patched_outputs

        toks = patched_outputs(self.p, list(patches), batch_size=batch_size, progress=progress)
        keep = torch.nonzero(self.keep).flatten()
        return [[self._decode(t[i]) for i in keep.tolist()] for t in toks]

    def score(self, name: str, sites: list, answers: list[str], expected: list[str],
              hypothesis: Hypothesis | None = None) -> IIAResult:
        match = hypothesis.matches if hypothesis is not None else (lambda a, e: a == e)
        hits = [match(a, e) for a, e in zip(answers, expected)]
        info = [e != b for e, b in zip(expected, self.base_answers)]
        n, c = len(hits), sum(hits)
        ni, ci = sum(info), sum(h for h, i in zip(hits, info) if i)
        return IIAResult(name, self.ctx.kind, [_site_str(s) for s in sites], n, c, c / n if n else float("nan"),
                         wilson_interval(c, n), ni, ci, ci / ni if ni else float("nan"), wilson_interval(ci, ni),
                         self.dropped)


def expected_answers(hypothesis: Hypothesis, pairs: Sequence[tuple[Problem, Problem]]) -> list[str]:
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
    from dgt_interp.patching import Site

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


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------


def _jsonable(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if hasattr(x, "to_dict"):
        return _jsonable(x.to_dict())
    return x


@dataclass
class Report:
    """A study's output: markdown text, named figures (matplotlib `Figure`s) and a dict of numbers.

    `write(out_dir)` writes `report.md` (figures linked as `<name>.png`), the PNGs and
    `report.json` (NaN -> null), each atomically; the JSON is written last, so its presence means
    the report is complete.
    """

    title: str
    markdown: str
    figures: dict = field(default_factory=dict)
    numbers: dict = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, fig in self.figures.items():
            save_figure(out / f"{name}.png", fig, dpi=110)
        write_text(out / "report.md", f"# {self.title}\n\n{self.markdown.strip()}\n")
        write_text(out / "report.json", json.dumps(_jsonable(self.numbers), indent=1))
        return out


def iia_table(rows: Sequence[tuple[str, IIAResult | BaselineResult]]) -> str:
    """A markdown table of IIA results (informative pairs first; all pairs after)."""
    lines = ["| hypothesis / baseline | model | IIA (informative pairs) | 95% CI | n | IIA (all pairs) | n |",
             "|---|---|---|---|---|---|---|"]
    for label, r in rows:
        if isinstance(r, BaselineResult):
            d = r.draws[0] if r.draws else None
            lines.append(f"| {label} (mean of {len(r.draws)} draws) | {d.kind if d else '?'} | "
                         f"{r.mean_iia_informative:.3f} | min {min(x.iia_informative for x in r.draws):.3f} – "
                         f"max {max(x.iia_informative for x in r.draws):.3f} | {d.n_informative if d else 0} | "
                         f"{r.mean_iia:.3f} | {d.n if d else 0} |")
        else:
            lines.append(f"| {label} | {r.kind} | {r.iia_informative:.3f} | {r.ci95_informative[0]:.3f}–"
                         f"{r.ci95_informative[1]:.3f} | {r.n_informative} | {r.iia:.3f} | {r.n} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# case studies and the registry
# ---------------------------------------------------------------------------------------------


@dataclass
class StudyContext:
    """What `CaseStudy.run` gets: models to load (zoo names or dirs, per kind), the output dir, the
    seed, `quick` (reduced settings for tests), and `progress(iterable, desc=...)` (a tqdm bar or not)."""

    models: dict[str, str]
    out: Path | None
    seed: int = 0
    quick: bool = False
    show_progress: bool = True

    def load(self, kind: str):
        """The model of `kind` ("diffusion" | "ar") as configured (one-line error if none)."""
        from dgt_interp.models import load_model

        if kind not in self.models:
            raise CaseStudyError(f"this study has no {kind} model; pass one with --model / models={{'{kind}': DIR}}")
        return load_model(self.models[kind])

    def progress(self, iterable, desc: str = "", total: int | None = None):
        if not self.show_progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit="item", leave=False)


@dataclass
class CaseStudy:
    """A named study: its `task`, the zoo models it runs on (`models`: kind -> zoo name or dir), its
    hypotheses (for listing; the study's `run` decides how to score them) and `run(ctx) -> Report`."""

    name: str
    task: Task
    description: str
    run: Callable[[StudyContext], Report]
    models: dict[str, str] = field(default_factory=dict)
    hypotheses: tuple[Hypothesis, ...] = ()
    render: Callable[[dict], str] | None = None  # numbers (as in report.json) -> markdown body; see `rerender`
    title: str | None = None  # the report's title (what `rerender` writes above the body)


_REGISTRY: dict[str, CaseStudy] = {}
_BUILTINS_LOADED = False


def register(study: CaseStudy, *, replace: bool = True) -> CaseStudy:
    """Add `study` to the registry (by `study.name`); returns it, so it can decorate a module constant."""
    if not isinstance(study, CaseStudy):
        raise CaseStudyError(f"register() takes a CaseStudy, got {type(study).__name__}")
    if not replace and study.name in _REGISTRY:
        raise CaseStudyError(f"a case study named {study.name!r} is already registered; pick another name")
    _REGISTRY[study.name] = study
    return study


def _load_builtins() -> None:
    """Import every package under `case_studies/` (each registers its study on import)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    try:
        import case_studies
    except ImportError:
        return
    for info in pkgutil.iter_modules(case_studies.__path__):
        if info.ispkg:
            importlib.import_module(f"case_studies.{info.name}")


def list_studies() -> list[CaseStudy]:
    """Registered studies (built-ins under `case_studies/` plus any registered or loaded), by name."""
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def load_study(path: str | Path) -> list[CaseStudy]:
    """Import a study from a `.py` file or a package dir outside dgt_interp; returns what it registered."""
    path = Path(path).expanduser().resolve()
    file = path / "__init__.py" if path.is_dir() else path
    if not file.is_file() or file.suffix != ".py":
        raise CaseStudyError(f"{str(path)!r} is not a .py file or a package dir with __init__.py")
    before = dict(_REGISTRY)
    mod_name = f"_dgt_user_study_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(mod_name, file,
                                                  submodule_search_locations=[str(path)] if path.is_dir() else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    new = [s for k, s in _REGISTRY.items() if before.get(k) is not s]
    if not new:
        raise CaseStudyError(f"{str(path)!r} registered no case study; call dgt_interp.casestudy.register(CaseStudy(...))")
    return new


def get_study(name: str) -> CaseStudy:
    """A registered study by name, or the study a path (file / package dir) registers."""
    if name.endswith(".py") or os.sep in name or Path(name).is_dir():
        studies = load_study(name)
        return studies[0]
    _load_builtins()
    if name not in _REGISTRY:
        raise CaseStudyError(f"unknown case study {name!r}; known: {', '.join(sorted(_REGISTRY)) or '(none)'} "
                             "(or pass a path to a study file)")
    return _REGISTRY[name]


def run_study(study: str | CaseStudy, *, models: dict[str, str] | None = None, out: str | Path | None = None,
              seed: int = 0, quick: bool = False, progress: bool = True) -> Report:
    """Run a study (by name, path or object) and write its report to `out` (if given)."""
    study = get_study(study) if isinstance(study, str) else study
    chosen = dict(study.models)
    chosen.update(models or {})
    ctx = StudyContext(chosen, Path(out) if out else None, seed=seed, quick=quick, show_progress=progress)
    t0 = time.time()
    report = study.run(ctx)
    report.numbers.setdefault("study", study.name)
    report.numbers.setdefault("models", chosen)
    report.numbers.setdefault("seed", seed)
    report.numbers.setdefault("quick", quick)
    report.numbers["seconds"] = round(time.time() - t0, 1)
    if out:
        report.write(out)
    return report


def rerender(study: str | CaseStudy, out_dir: str | Path) -> Path:
    """Rewrite `out_dir/report.md` from `out_dir/report.json` with the study's renderer (`study.render`,
    titled `study.title`), without rerunning any model: for a wording change in the report text."""
    study = get_study(study) if isinstance(study, str) else study
    out = Path(out_dir)
    if study.render is None:
        raise CaseStudyError(f"case study {study.name!r} has no renderer (CaseStudy.render); rerun it instead")
    if not (out / "report.json").is_file():
        raise CaseStudyError(f"{str(out)!r} has no report.json; run the study there first (case-study run --out)")
    numbers = json.loads((out / "report.json").read_text())
    markdown = study.render(numbers)
    write_text(out / "report.md", f"# {study.title or study.name}\n\n{markdown.strip()}\n")
    return out / "report.md"


__all__ = [
    "CaseStudyError", "CausalModel", "SiteContext", "Hypothesis", "IIAResult", "PairRuns", "expected_answers",
    "interchange_accuracy", "random_sites", "BaselineResult", "random_site_baseline", "Report", "iia_table",
    "StudyContext", "CaseStudy", "register", "list_studies", "load_study", "get_study", "run_study", "rerender",
]
