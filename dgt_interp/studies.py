"""Case studies: a task, hypotheses written as code (`dgt_interp.causal`), and `run()` producing a report.

A **case study** (`CaseStudy`) is a name, a task, the zoo models it uses and `run(ctx) -> Report`;
`register(study)` adds it to the registry that `dgt-interp case-study list/run` reads. Built-in
studies (the `case_studies/` package) and third-party ones are discovered the same way, through the
`dgt_interp.case_studies` entry-point group: declare

    [project.entry-points."dgt_interp.case_studies"]
    my_study = "my_package.my_study"

and importing that module registers its study. A study anywhere else is registered by importing its
file (`load_study(path)`, or pass the path as NAME on the command line). `Report.write(dir)` writes
`report.md`, one PNG per figure and `report.json` into a temporary sibling that replaces `dir` whole;
for a study with `viewer=True` (every built-in one), `run_study` adds `viewer.html`, the interactive
viewer page of one example run, linked at the end of `report.md` (`example_page`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from dgt_interp.atomic import atomic_dir, save_figure, write_text
from dgt_interp.causal import BaselineResult, CaseStudyError, Hypothesis, IIAResult
from dgt_interp.evaluate import task_tokenizer
from dgt_interp.models import load_model
from dgt_interp.tasks import Task, is_task_tokenizer
from dgt_interp.tokenizer import require_chat_template
from dgt_interp.viz.viewer import page_data, render_html, view_capture

ENTRY_POINT_GROUP = "dgt_interp.case_studies"


def jsonable(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return jsonable(x.tolist())
    if hasattr(x, "to_dict"):
        return jsonable(x.to_dict())
    return x


QUICK_BANNER = ("> **Quick run** (`--quick`): reduced settings and small n, a smoke test of the pipeline. The numbers "
                "below are not results: do not draw conclusions from them; run without `--quick` for the report.")


@dataclass
class Report:
    """A study's output: markdown text, named figures (matplotlib `Figure`s) and a dict of numbers.

    `write(out_dir)` writes `report.md` (figures linked as `<name>.png`), the PNGs and
    `report.json` (NaN -> null) into a temporary sibling that then replaces `out_dir` in one step:
    an interrupted write leaves the previous report whole.
    """

    title: str
    markdown: str
    figures: dict = field(default_factory=dict)
    numbers: dict = field(default_factory=dict)
    pages: dict = field(default_factory=dict)  # file name -> HTML text (the viewer page, `example_page`)

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise CaseStudyError(f"{str(out)!r} exists and is not a directory; pass a directory for the report")
        with atomic_dir(out) as tmp:  # the report dir is replaced whole: never one run's figures beside another's text
            for name, fig in self.figures.items():
                save_figure(tmp / f"{name}.png", fig, dpi=110)
            for name, html in self.pages.items():
                write_text(tmp / name, html)
            write_text(tmp / "report.md", report_text(self.title, self.markdown, self.numbers))
            write_text(tmp / "report.json", json.dumps(jsonable(self.numbers), indent=1))
        return out


def report_text(title: str, markdown: str, numbers: dict) -> str:
    """report.md: the title, the quick-run banner when `numbers["quick"]`, the study's markdown and, when
    `numbers["viewer"]` names a viewer page (see `example_page`), one closing line that links it (what
    `Report.write` and `rerender` both write)."""
    banner = f"{QUICK_BANNER}\n\n" if numbers.get("quick") else ""
    text = f"# {title}\n\n{banner}{markdown.strip()}\n"
    viewer = numbers.get("viewer")
    if viewer:
        text += (f"\nViewer: [{viewer['page']}]({viewer['page']}) shows one example run step by step (the "
                 f"{viewer['kind']} model `{viewer['model']}` on `{viewer['prompt']}`, seed {viewer['seed']}; open it "
                 "in a browser).\n")
    return text


VIEWER_PAGE = "viewer.html"


def example_page(study: "CaseStudy", ctx: "StudyContext") -> tuple[str, dict]:
    """The viewer page (`dgt_interp.viz.viewer`) of one example run of a study: its diffusion model (the
    AR twin if it has none) on the first held-out problem of its task, at the study's seed, with the
    logit lens. Returns (HTML, `numbers["viewer"]`)."""
    kind = "diffusion" if "diffusion" in ctx.models else "ar"
    model = ctx.load(kind)
    prompt = study.task.problems("test", 1, seed=ctx.seed)[0].prompt
    traj = view_capture(model, prompt, chat=ctx.chat, seed=ctx.seed)
    title = f"{study.name} case study: {ctx.models[kind]} on {prompt!r}"
    html = render_html(page_data(traj, model=model, title=title))
    return html, {"page": VIEWER_PAGE, "kind": kind, "model": str(ctx.models[kind]), "prompt": prompt, "seed": ctx.seed}


def iia_table(rows: Sequence[tuple[str, IIAResult | BaselineResult | dict]]) -> str:
    """A markdown table of IIA results (informative pairs first; all pairs after).

    Rows are (label, result): an `IIAResult` / `BaselineResult`, or its `to_dict()` as live or read
    back from report.json (NaN there is None) — the same text either way, so a report renders from
    its numbers alone."""

    def num(x) -> float:
        return float("nan") if x is None else float(x)

    lines = ["| hypothesis / baseline | model | IIA (informative pairs) | 95% CI | n | IIA (all pairs) | n |",
             "|---|---|---|---|---|---|---|"]
    for label, r in rows:
        r = r.to_dict() if hasattr(r, "to_dict") else r
        if "draws" in r:  # a random-site baseline
            draws = r["draws"]
            d = draws[0] if draws else None
            lines.append(f"| {label} (mean of {len(draws)} draws) | {d['kind'] if d else '?'} | "
                         f"{num(r['mean_iia_informative']):.3f} | min "
                         f"{min(num(x['iia_informative']) for x in draws):.3f} – "
                         f"max {max(num(x['iia_informative']) for x in draws):.3f} | "
                         f"{d['n_informative'] if d else 0} | {num(r['mean_iia']):.3f} | {d['n'] if d else 0} |")
        else:
            lo, hi = r["ci95_informative"]
            lines.append(f"| {label} | {r['kind']} | {num(r['iia_informative']):.3f} | {num(lo):.3f}–"
                         f"{num(hi):.3f} | {r['n_informative']} | {num(r['iia']):.3f} | {r['n']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# case studies and the registry
# ---------------------------------------------------------------------------------------------


@dataclass
class StudyContext:
    """What `CaseStudy.run` gets: models to load (zoo names or dirs, per kind), the output dir, the
    seed, `quick` (reduced settings for tests), and `progress(iterable, desc=...)` (a tqdm bar or not).
    `chat`: wrap prompts in the model tokenizer's chat template (`prompt_batch(..., chat=ctx.chat)`);
    `char_tokenizer`: the study reads task text one character per position, so `load` refuses a
    model whose own tokenizer is not the tasks' character tokenizer."""

    models: dict[str, str]
    out: Path | None
    seed: int = 0
    quick: bool = False
    show_progress: bool = True
    chat: bool = False
    char_tokenizer: bool = True

    def load(self, kind: str):
        """The model of `kind` ("diffusion" | "ar") as configured (one-line error if none, or if its own
        tokenizer cannot carry this study's text: see the class docstring)."""
        if kind not in self.models:
            raise CaseStudyError(f"this study has no {kind} model; pass one with --model / models={{'{kind}': DIR}}")
        model = load_model(self.models[kind])
        tok = task_tokenizer(model)
        if self.chat:
            require_chat_template(tok)
            if self.char_tokenizer:
                raise CaseStudyError("this study's prompts are task text read one character per position; it has no "
                                     "chat form: drop --chat")
        if self.char_tokenizer and not is_task_tokenizer(tok):
            raise CaseStudyError(f"this study reads task text one character per canvas position; the {kind} model "
                                 f"{self.models[kind]!r} has another tokenizer ({len(tok)} tokens): pass a model "
                                 "trained with `dgt-interp train` (the tasks' character tokenizer)")
        return model

    def progress(self, iterable, desc: str = "", total: int | None = None):
        if not self.show_progress:
            return iterable
        return tqdm(iterable, desc=desc, total=total, unit="item", leave=False)


@dataclass
class CaseStudy:
    """A named study: its `task`, the zoo models it runs on (`models`: kind -> zoo name or dir), its
    hypotheses (for listing; the study's `run` decides how to score them) and `run(ctx) -> Report`.
    `render(numbers) -> markdown` and `title`, when given, let `rerender(study, dir)` rewrite
    `report.md` from `report.json` alone (a wording change needs no rerun)."""

    name: str
    task: Task
    description: str
    run: Callable[[StudyContext], Report]
    models: dict[str, str] = field(default_factory=dict)
    hypotheses: tuple[Hypothesis, ...] = ()
    render: Callable[[dict], str] | None = None  # numbers (as in report.json) -> markdown body; see `rerender`
    title: str | None = None  # the report's title (what `rerender` writes above the body)
    char_tokenizer: bool = True  # reads task text one character per position (see StudyContext)
    viewer: bool = False  # run_study writes viewer.html (one example run, `example_page`) and links it in report.md


_REGISTRY: dict[str, CaseStudy] = {}
_DISCOVERED = False


def register(study: CaseStudy, *, replace: bool = True) -> CaseStudy:
    """Add `study` to the registry (by `study.name`); returns it, so it can decorate a module constant."""
    if not isinstance(study, CaseStudy):
        raise CaseStudyError(f"register() takes a CaseStudy, got {type(study).__name__}")
    if not replace and study.name in _REGISTRY:
        raise CaseStudyError(f"a case study named {study.name!r} is already registered; pick another name")
    _REGISTRY[study.name] = study
    return study


def discover() -> None:
    """Import every module declared in the `dgt_interp.case_studies` entry-point group (once); each
    registers its study on import. The library never imports a study package by name."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value.split(":")[0])


def list_studies() -> list[CaseStudy]:
    """Registered studies (every entry point of `dgt_interp.case_studies`, plus any registered or loaded), by name."""
    discover()
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
        raise CaseStudyError(f"{str(path)!r} registered no case study; call dgt_interp.studies.register(CaseStudy(...))")
    return new


def get_study(name: str) -> CaseStudy:
    """A registered study by name, or the study a path (file / package dir) registers."""
    if name.endswith(".py") or os.sep in name or Path(name).is_dir():
        studies = load_study(name)
        return studies[0]
    discover()
    if name not in _REGISTRY:
        raise CaseStudyError(f"unknown case study {name!r}; known: {', '.join(sorted(_REGISTRY)) or '(none)'} "
                             "(or pass a path to a study file)")
    return _REGISTRY[name]


def run_study(study: str | CaseStudy, *, models: dict[str, str] | None = None, out: str | Path | None = None,
              seed: int = 0, quick: bool = False, progress: bool = True, chat: bool = False) -> Report:
    """Run a study (by name, path or object) and write its report to `out` (if given).

    `chat=True` asks for prompts in the model tokenizer's chat template (`StudyContext.chat`)."""
    study = get_study(study) if isinstance(study, str) else study
    chosen = dict(study.models)
    chosen.update(models or {})
    ctx = StudyContext(chosen, Path(out) if out else None, seed=seed, quick=quick, show_progress=progress, chat=chat,
                       char_tokenizer=study.char_tokenizer)
    t0 = time.time()
    report = study.run(ctx)
    report.numbers.setdefault("study", study.name)
    report.numbers.setdefault("models", chosen)
    report.numbers.setdefault("seed", seed)
    report.numbers.setdefault("quick", quick)
    if study.render is not None:  # the text from the numbers as stored (with "quick"): what `rerender` writes
        report.markdown = study.render(report.numbers)
    if out and study.viewer and VIEWER_PAGE not in report.pages:
        report.pages[VIEWER_PAGE], report.numbers["viewer"] = example_page(study, ctx)
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
    return write_text(out / "report.md", report_text(study.title or study.name, markdown, numbers))


DOCS_IMG = "img"  # docs/<DOCS_IMG>/study_<name>/ holds a published run's report.json and PNGs


def docs_page_text(study: "CaseStudy", numbers: dict) -> str:
    """The docs page of a published run (`publish`): one line saying where it comes from, then the report
    exactly as `report.md` renders from `numbers` (its interpretation included), figure links pointing at
    `img/study_<name>/`. No hand-written text: the docs page cannot drift from its report."""
    if study.render is None:
        raise CaseStudyError(f"case study {study.name!r} has no renderer (CaseStudy.render); it cannot be published")
    img = f"{DOCS_IMG}/study_{study.name}"
    numbers = {k: v for k, v in numbers.items() if k != "viewer"}  # the viewer page is not published
    text = report_text(study.title or study.name, study.render(numbers), numbers)
    text = text.replace("](", f"]({img}/")  # report.md links only its own files
    title, _, rest = text.partition("\n\n")
    models = ", ".join(f"`{m}`" for m in numbers.get("models", {}).values())
    origin = (f"Generated by `dgt-interp case-study run {study.name} --out <dir>{' --quick' if numbers.get('quick') else ''}` "
              f"(seed {numbers.get('seed', 0)}, {'quick' if numbers.get('quick') else 'full'} settings, models {models}) "
              f"and published with `dgt-interp case-study render {study.name} <dir> --docs docs`: this page is that "
              f"run's report.md, unedited; numbers: [report.json]({img}/report.json). Definitions: "
              "[case_studies.md](case_studies.md).")
    return f"{title}\n\n{origin}\n\n{rest}"


def publish(study: "str | CaseStudy", run_dir: str | Path, docs_dir: str | Path) -> Path:
    """Publish a finished run (`run_dir` with report.json and its PNGs) as `docs_dir/study_<name>.md`: the
    PNGs and report.json are copied to `docs_dir/img/study_<name>/` (replacing what was there) and the page
    is `docs_page_text`. Returns the page's path."""
    study = get_study(study) if isinstance(study, str) else study
    run = Path(run_dir)
    if not (run / "report.json").is_file():
        raise CaseStudyError(f"{str(run)!r} has no report.json; run the study there first (case-study run --out)")
    numbers = json.loads((run / "report.json").read_text())
    page = docs_page_text(study, numbers)
    docs = Path(docs_dir)
    with atomic_dir(docs / DOCS_IMG / f"study_{study.name}") as tmp:
        for f in [run / "report.json", *sorted(run.glob("*.png"))]:
            (tmp / f.name).write_bytes(f.read_bytes())
    return write_text(docs / f"study_{study.name}.md", page)


__all__ = [
    "docs_page_text", "publish", "ENTRY_POINT_GROUP", "CaseStudyError", "Report", "report_text", "example_page", "iia_table", "jsonable", "StudyContext", "CaseStudy", "register",
    "discover", "list_studies", "load_study", "get_study", "run_study", "rerender",
]
