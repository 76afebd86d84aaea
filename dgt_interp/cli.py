"""`dgt-interp` command line: train models, list the zoo, run the demo and the analyses.

Every subcommand turns bad input into a one-line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dgt_interp import zoo
from dgt_interp.errors import DgtInterpError
from dgt_interp.bottleneck import SAMPLERS, VARIANTS, bottleneck_table, format_table
from dgt_interp.demo import run_demo, run_flagship_study
from dgt_interp.depth.presets import PRESETS, compare, get_preset, preset_summary, settings_notes
from dgt_interp.lens_report import generation_kwargs, lens_report
from dgt_interp.models import TinySize, load_model
from dgt_interp.patch_report import METRICS, SWEEPS, run_patch
from dgt_interp.studies import get_study, list_studies, publish, rerender, run_study
from dgt_interp.tasks import get_task
from dgt_interp.train import TrainConfig, train
from dgt_interp.trajectory import Trajectory
from dgt_interp.viz.viewer import PAGE_K, check_out_path, load_patching, view_capture, write_page


THREADS_HELP = "CPU threads for torch (torch.set_num_threads); default: torch's own choice"
CHAT_HELP = "wrap each prompt in the model tokenizer's chat template (a user turn, then the model's turn)"


def _no_default(action) -> bool:
    """Nothing to show: None, a flag's False, or suppressed (identity, not ==: a default of 0 is shown)."""
    return action.default is None or action.default is False or action.default is argparse.SUPPRESS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default once: appended as "(default: X)" unless the help text already
    says what the default is, or there is none to show (a required option, None, a flag's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.required or _no_default(action):
            return text
        return f"{text} (default: %(default)s)".strip()


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give every option without help text one, so its default appears in `--help` (the formatter skips
    options without help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)
        elif action.option_strings and action.help is None and not _no_default(action):
            action.help = "(default: %(default)s)"


class CLIError(DgtInterpError, ValueError):
    """A bad combination of command-line options (one-line message)."""


def _set_threads(args) -> None:
    """`--threads N` on an analysis command: torch.set_num_threads(N) before it runs (train passes its own)."""
    threads = getattr(args, "threads", None)
    if threads is None or getattr(args, "command", None) == "train":
        return
    if isinstance(threads, bool) or threads < 1:
        raise CLIError(f"--threads {threads!r} must be an int >= 1")
    import torch

    torch.set_num_threads(threads)


def _positive(what: str, v, low=1) -> None:
    if v is not None and (v != v or v < low or v == float("inf")):
        raise CLIError(f"{what} {v!r} must be a finite number >= {low}")


def _cmd_train(args) -> None:
    canvas = args.canvas or max(TinySize.canvas_length, get_task(args.task).max_answer_chars + 1)
    size = TinySize(hidden_size=args.hidden, num_hidden_layers=args.layers, attention=args.attention,
                    canvas_length=canvas)
    cfg = TrainConfig(task=args.task, kind=args.kind, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      seed=args.seed, eval_n=args.eval_n, size=size, threads=args.threads, mix=args.mix,
                      init_from=args.init_from, warmup=args.warmup, eval_every=args.eval_every,
                      noise_power=args.noise_power)
    command = "dgt-interp " + " ".join(sys.argv[1:])
    _, recipe = train(cfg, args.out, progress=not args.quiet, command=command)
    acc = recipe.get("heldout_exact_match", {}).get("accuracy")
    print(f"saved {args.out} ({recipe['train_seconds']:.0f} s"
          + (f", held-out exact match {acc:.1%})" if acc is not None else ")"))


def _cmd_zoo_list(args) -> None:
    names = zoo.names()
    if not names:
        print("(no zoo models shipped)")
    for name in names:
        r = zoo.recipe(name)
        acc = r.get("heldout_exact_match", {}).get("accuracy")
        zero = r.get("heldout_exact_match_self_conditioning_zeroed", {}).get("accuracy")
        line = f"{name:24s} {r.get('kind', '?'):9s} task={r.get('task', '?'):9s}"
        if acc is not None:
            line += f" exact_match={acc:.1%}"
        if zero is not None:
            line += f" (self-cond zeroed {zero:.1%})"
        print(line + f"  {zoo.path(name)}")


def _cmd_demo(args) -> None:
    if args.study != "none":
        get_study(args.study)  # an unknown study is refused before anything runs or is written
    page = Path(args.out) / "viewer.html"
    run_demo(args.model, n=args.n, seed=args.seed, entropy_bound=args.entropy_bound, chat=args.chat, page=page)
    if args.study != "none":
        run_flagship_study(args.study, out=args.out, quick=args.quick, progress=not args.quiet)
    print(f"Viewer page of the first problem: {page}")


def _cmd_bottleneck(args) -> None:
    _positive("-n", args.n)
    task = get_task(args.task)
    model = load_model(args.model)
    rows = bottleneck_table(model, task, variants=args.variants, samplers=args.samplers, n=args.n, seed=args.seed,
                            progress=not args.quiet, chat=args.chat)
    print(f"model={args.model} task={task.name} n={args.n} seed={args.seed}")
    print(format_table(rows))


def _cmd_depth(args) -> None:
    _positive("--steps", args.steps)
    _positive("--canvas", args.canvas)
    _positive("--prompt-len", args.prompt_len)
    preset = get_preset(args.preset)
    rule_sets = ["reference", "corrected"] if args.rules == "both" else [args.rules]
    if args.vs is None:
        for rules in rule_sets:
            for line in preset_summary(args.preset, steps=args.steps, canvas=args.canvas,
                                       prompt_len=args.prompt_len, rules=rules):
                print(line)
        return
    other = get_preset(args.vs)
    diffusion, ar = (args.preset, args.vs) if preset.kind == "diffusion" else (args.vs, args.preset)
    if PRESETS[diffusion].kind != "diffusion" or PRESETS[ar].kind != "ar":
        raise CLIError(f"--preset and --vs must be one diffusion and one AR preset; got {preset.kind} and {other.kind}")
    print(f"{diffusion} vs {ar}")
    for note in settings_notes(PRESETS[diffusion].dtype):
        print(f"  assumes: {note}")
    for rules in rule_sets:
        result = compare(diffusion, ar, steps=args.steps, canvas=args.canvas, prompt_len=args.prompt_len, rules=rules)
        for line in result.lines():
            print(f"  {line}")
        print(f"  ({result.seconds:.1f} s on the meta device)")


def _cmd_lens(args) -> None:
    lens_report(args.model, args.prompt, args.out, position=args.position, target=args.target, tuned=args.tuned,
                fit_tuned=args.fit_tuned, task=args.task, fit_n=args.fit_n, fit_iters=args.fit_iters,
                step_buckets=args.step_buckets, seed=args.seed, k=args.k, entropy_bound=args.entropy_bound,
                max_denoising_steps=args.max_denoising_steps, chat=args.chat)


def _cmd_patch(args) -> None:
    s = run_patch(args.model, args.clean, args.corrupted, args.out, sweeps=args.sweeps, metric=args.metric,
                  seed=args.seed, batch_size=args.batch_size, attribution=args.attribution, progress=not args.quiet,
                  chat=args.chat)
    print(f"wrote {args.out}: {', '.join(s['sweeps'])} over {s['steps']} steps ({s['metric']}: clean "
          f"{s['clean_metric']:.3f}, corrupted {s['corrupted_metric']:.3f}; effects up to {s['rounding_noise']:.1g} "
          "are float rounding)")


def _cmd_view(args) -> None:
    if (args.prompt is None) == (args.trajectory is None):
        raise CLIError("pass --prompt (run --model on it) or --trajectory DIR (a saved run), exactly one of them")
    if args.prompt is not None and args.model is None:
        raise CLIError("--prompt needs --model (a zoo name or model dir)")
    if args.trajectory is not None:
        run_only = [flag for flag, v in (("--entropy-bound", args.entropy_bound), ("--max-denoising-steps",
                    args.max_denoising_steps), ("--chat", args.chat), ("--attention", args.attention)) if v]
        if run_only:
            raise CLIError(f"{run_only[0]} applies to a new run (--prompt); a saved --trajectory is shown as recorded")
    _positive("-k", args.k)
    check_out_path(args.out)  # before any model runs
    patching = load_patching(args.patching) if args.patching is not None else None
    model = load_model(args.model) if args.model is not None else None
    if args.trajectory is not None:
        traj = Trajectory.load(args.trajectory, model=model)
        title = f"{args.trajectory}" + (f" ({args.model})" if args.model else "")
    else:
        gen = generation_kwargs(model, args.entropy_bound, args.max_denoising_steps)
        traj = view_capture(model, args.prompt, chat=args.chat, seed=args.seed, attention=args.attention,
                            lens=not args.no_lens, backend=args.backend, **gen)
        title = f"{args.model}: {args.prompt!r}"
    path = write_page(traj, args.out, model=model, patching=patching, k=args.k, lens=False if args.no_lens else None,
                      title=title)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; {traj.n_steps} steps); open it in a browser")


def _cmd_case_study_list(args) -> None:
    studies = list_studies()
    if not studies:
        print("(no case studies registered)")
    for st in studies:
        models = ", ".join(f"{k}={v}" for k, v in st.models.items())
        print(f"{st.name:16s} task={st.task.name:9s} {st.description}" + (f"  [{models}]" if models else ""))


def _cmd_case_study_run(args) -> None:
    study = get_study(args.name)
    models = {}
    if args.model:
        models["diffusion"] = args.model
    if args.ar_model:
        models["ar"] = args.ar_model
    out = args.out or f"case_study_{study.name}"
    report = run_study(study, models=models, out=out, seed=args.seed, quick=args.quick, progress=not args.quiet,
                       chat=args.chat)
    print(f"wrote {out}: report.md, report.json, {len(report.figures)} figures ({report.numbers['seconds']:.0f} s)")


def _cmd_case_study_render(args) -> None:
    study = get_study(args.name)
    path = rerender(study, args.dir)
    print(f"wrote {path} from {args.dir}/report.json (no model was run)")
    if args.docs:
        page = publish(study, args.dir, args.docs)
        print(f"wrote {page} and {Path(args.docs) / 'img' / ('study_' + study.name)}/ (report.json, figures)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dgt-interp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    fmt = {"formatter_class": HelpFormatter}  # --help shows every default, once

    t = sub.add_parser("train", **fmt, help="train a tiny diffusion or AR model on a task and save it as an HF dir")
    t.add_argument("--task", required=True)
    t.add_argument("--kind", choices=["diffusion", "ar"], required=True)
    t.add_argument("--out", required=True, help="output dir (written atomically)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-n", type=int, default=1000, help="held-out problems scored after training (0: skip)")
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--canvas", type=int, default=None,
                   help="canvas length (diffusion) / max new tokens (AR); default: the task's longest answer + EOS, at least 8")
    t.add_argument("--attention", choices=["full", "gemma"], default="full",
                   help="full: every layer full attention; gemma: sliding-window layers + a full last layer")
    t.add_argument("--mix", default=None, help="a named training distribution of the task (e.g. addition: unequal)")
    t.add_argument("--init-from", default=None, help="continue training from this model dir")
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--noise-power", type=float, default=1.0,
                   help="diffusion: noise level t = u ** POWER, u uniform (above 1: more nearly clean canvases)")
    t.add_argument("--eval-every", type=int, default=0,
                   help="print held-out exact match on 200 problems every this many steps (0: never)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    z = sub.add_parser("zoo", **fmt, help="the shipped models")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zl = zsub.add_parser("list", **fmt, help="list shipped models with their held-out accuracy")
    zl.set_defaults(func=_cmd_zoo_list)
    b = sub.add_parser("bottleneck", **fmt, help="accuracy under token bottlenecks of the self-conditioning channel")
    b.add_argument("--model", required=True, help="zoo name or model dir (DiffusionGemma)")
    b.add_argument("--task", required=True)
    b.add_argument("--variants", nargs="+", default=list(VARIANTS),
                   help="none, top-K, top-p=P, one-hot, zero")
    b.add_argument("--samplers", nargs="+", default=list(SAMPLERS), help=f"sampler settings: {', '.join(SAMPLERS)}")
    b.add_argument("-n", type=int, default=1000, help="held-out problems per cell")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--chat", action="store_true", help=CHAT_HELP)
    b.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_cmd_bottleneck)

    d = sub.add_parser("demo", **fmt, help="denoise a few additions step by step, then run the flagship case study")
    d.add_argument("--model", default="addition-diffusion", help="zoo name or model dir")
    d.add_argument("-n", type=int, default=3, help="number of problems")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--entropy-bound", type=float, default=None,
                   help="sampler entropy bound (smaller = fewer tokens accepted per step = more steps)")
    d.add_argument("--study", default="addition",
                   help="case study to run after the trace, end to end ('none' to skip)")
    d.add_argument("--out", default="dgt_interp_demo", help="where the viewer page (viewer.html) and the study report go")
    d.add_argument("--quick", action="store_true", help="run the study's reduced setting (seconds, for smoke tests)")
    d.add_argument("--chat", action="store_true", help=CHAT_HELP)
    d.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_demo)

    dp = sub.add_parser("depth", **fmt, help="opaque serial depth of a released architecture (meta device, no weights)")
    dp.add_argument("--preset", required=True,
                    help="diffusiongemma-26b-a4b, gemma4-26b-a4b, diffusiongemma-tiny or gemma4-tiny")
    dp.add_argument("--vs", default=None, help="a preset to compare with (one diffusion, one AR)")
    dp.add_argument("--steps", type=int, default=48, help="denoising steps per canvas")
    dp.add_argument("--canvas", type=int, default=None, help="canvas length (default: the model's, 256)")
    dp.add_argument("--prompt-len", type=int, default=256, help="prompt tokens")
    dp.add_argument("--rules", choices=["reference", "corrected", "both"], default="reference",
                    help="cost rules: the published tool's, ours with its gaps fixed, or both")
    dp.set_defaults(func=_cmd_depth)

    ln = sub.add_parser("lens", **fmt, help="logit / tuned lens over (step, layer, position) of one prompt: PNGs + tensors")
    ln.add_argument("--model", required=True, help="zoo name or model dir")
    ln.add_argument("--prompt", required=True, help='e.g. "1234+5678="')
    ln.add_argument("--out", required=True, help="output dir (PNGs, lens_*.safetensors, summary.json)")
    ln.add_argument("--position", type=int, default=0, help="canvas position for the layer x step heatmap")
    ln.add_argument("--target", default=None, help="target token (default: the token finally emitted at --position)")
    ln.add_argument("--tuned", default=None, help="a tuned lens dir to apply as well")
    ln.add_argument("--fit-tuned", default=None, help="train a tuned lens on the model's task and save it to this dir")
    ln.add_argument("--task", default=None, help="task for --fit-tuned (default: the model's recipe)")
    ln.add_argument("--fit-n", type=int, default=256, help="training prompts for --fit-tuned (held-out: half as many)")
    ln.add_argument("--fit-iters", type=int, default=300)
    ln.add_argument("--step-buckets", type=int, default=1, help="tuned-lens translators per step (1 = shared)")
    ln.add_argument("--seed", type=int, default=0)
    ln.add_argument("-k", type=int, default=5, help="top-k tokens kept per (step, layer, position)")
    ln.add_argument("--entropy-bound", type=float, default=None, help="sampler entropy bound (smaller = more steps)")
    ln.add_argument("--max-denoising-steps", type=int, default=None)
    ln.add_argument("--chat", action="store_true", help=CHAT_HELP)
    ln.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    ln.set_defaults(func=_cmd_lens)
    pt = sub.add_parser("patch", **fmt, help="activation patching over (step, layer, position) of a clean/corrupted pair: PNGs + tensors")
    pt.add_argument("--model", required=True, help="zoo name or model dir")
    pt.add_argument("--clean", required=True, help='clean prompt, e.g. "4721+3856="')
    pt.add_argument("--corrupted", required=True, help="corrupted prompt with the same number of tokens")
    pt.add_argument("--out", required=True, help="output dir (<sweep>.png, patching.safetensors, patching.json)")
    # no argparse choices here: the library's own check gives the one-line error (argparse prints usage too)
    pt.add_argument("--sweeps", nargs="+", default=list(SWEEPS), help=f"sweeps to run: {', '.join(SWEEPS)}")
    pt.add_argument("--metric", default="logit_diff", help=f"what the patched runs are scored by: {', '.join(METRICS)}")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--batch-size", type=int, default=64, help="patched copies per generate")
    pt.add_argument("--attribution", action="store_true", help="also attribution patching (gradient estimate)")
    pt.add_argument("--chat", action="store_true", help=CHAT_HELP)
    pt.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    pt.add_argument("--quiet", action="store_true")
    pt.set_defaults(func=_cmd_patch)

    vw = sub.add_parser("view", **fmt, help="the interactive trajectory viewer: one self-contained HTML page of a run")
    vw.add_argument("--model", default=None, help="zoo name or model dir: the model to run --prompt on; with "
                    "--trajectory, the captured model (token text and the logit lens)")
    vw.add_argument("--prompt", default=None, help='run the model on this prompt, e.g. "1234+5678="')
    vw.add_argument("--trajectory", default=None, help="a saved trajectory dir (Trajectory.save) instead of --prompt")
    vw.add_argument("--out", required=True, help="the page to write (an .html file in an existing directory)")
    vw.add_argument("--patching", default=None, help="a `dgt-interp patch` output dir of the same prompt to show")
    vw.add_argument("--seed", type=int, default=0)
    vw.add_argument("--entropy-bound", type=float, default=None, help="sampler entropy bound (smaller = more steps)")
    vw.add_argument("--max-denoising-steps", type=int, default=None)
    vw.add_argument("--backend", default="tl", help="capture backend: tl or nnsight")
    vw.add_argument("-k", type=int, default=PAGE_K, help="lens top-k tokens per (step, layer, position) in the page")
    vw.add_argument("--attention", action="store_true", help="record and show attention patterns (DiffusionGemma)")
    vw.add_argument("--no-lens", action="store_true", help="do not record or show the logit lens")
    vw.add_argument("--chat", action="store_true", help=CHAT_HELP)
    vw.set_defaults(func=_cmd_view)

    cs = sub.add_parser("case-study", **fmt, help="packaged case studies (case_studies/<name>/): list them or run one")
    cssub = cs.add_subparsers(dest="case_study_command", required=True)
    csl = cssub.add_parser("list", **fmt, help="list registered case studies")
    csl.set_defaults(func=_cmd_case_study_list)
    csr = cssub.add_parser("run", **fmt, help="run a case study and write report.md, PNGs and report.json")
    csr.add_argument("name", help="a registered study (see `case-study list`) or a path to a study .py file / package")
    csr.add_argument("--model", default=None, help="DiffusionGemma zoo name or dir (default: the study's)")
    csr.add_argument("--ar-model", default=None, help="AR twin zoo name or dir (default: the study's)")
    csr.add_argument("--out", default=None, help="output dir (default: ./case_study_<name>)")
    csr.add_argument("--seed", type=int, default=0)
    csr.add_argument("--quick", action="store_true", help="reduced settings (minutes, small n): a smoke run")
    csr.add_argument("--chat", action="store_true", help=CHAT_HELP)
    csr.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    csr.add_argument("--quiet", action="store_true", help="no progress bar")
    csr.set_defaults(func=_cmd_case_study_run)
    csd = cssub.add_parser("render", **fmt, help="rewrite report.md of a finished run from its report.json (no model runs)")
    csd.add_argument("name", help="the study that wrote the report")
    csd.add_argument("dir", help="the report dir (holds report.json)")
    csd.add_argument("--docs", default=None, metavar="DOCS_DIR",
                     help="also publish the run as DOCS_DIR/study_<name>.md (the report, unedited) with its figures "
                          "and report.json in DOCS_DIR/img/study_<name>/")
    csd.set_defaults(func=_cmd_case_study_render)
    _show_defaults(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _set_threads(args)
        args.func(args)
    except DgtInterpError as e:  # bad input; anything else is a bug and shows its traceback
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
