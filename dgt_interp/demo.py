"""`make demo`: denoise a few additions with the bundled diffusion model and show every step, write the
interactive viewer page of the first one, then run the flagship case study (addition) end to end and
say where its report and the page are.

For each problem it prints, per denoising step, the canvas the decoder read, the argmax canvas it
proposed, and which positions the entropy-bound sampler accepted (the rest are re-noised).
"""

from __future__ import annotations

from pathlib import Path

from dgt_interp.capturing import capture
from dgt_interp.evaluate import decode_answers, prompt_batch, task_tokenizer
from dgt_interp.models import load_model
from dgt_interp.sampling import entropy_bound_kwargs
from dgt_interp.studies import run_study
from dgt_interp.tasks import ADDITION, build_tokenizer
from dgt_interp.tokenizer import require_chat_template, to_str_tokens
from dgt_interp.viz.viewer import view_capture, write_page


def show_tokens(ids, accepted=None, tokenizer=None) -> str:
    """Canvas ids as text through `tokenizer` (default the tasks' character tokenizer); EOS '$', pad '_',
    other special tokens ('<...>') '·'; accepted positions bracketed."""
    tok = tokenizer if tokenizer is not None else build_tokenizer()
    show = {tok.pad_token_id: "_", tok.eos_token_id: "$"}
    out = []
    for i, t in enumerate(int(x) for x in ids):
        text = to_str_tokens(tok, [t])[0]
        ch = show.get(t) or ("·" if len(text) > 1 and text.startswith("<") and text.endswith(">") else text)
        out.append(f"[{ch}]" if accepted is not None and bool(accepted[i]) else f" {ch} ")
    return "".join(out)


def run_demo(model_name: str = "addition-diffusion", n: int = 3, seed: int = 0, entropy_bound: float | None = None,
             chat: bool = False, page: str | Path | None = None, print_fn=print) -> list[bool]:
    """Denoise `n` held-out additions step by step; returns whether each answer was right.

    Prompts go through the model's own tokenizer (`chat=True`: its chat template). `page`: also write
    the interactive viewer page (`dgt_interp.viz.viewer`) of the first problem's run there and print
    its path (that run records the logit lens and attention patterns as well); its directory is made
    once the run has succeeded (the demo's own output dir)."""
    model = load_model(model_name)
    tok = task_tokenizer(model)
    if chat:
        require_chat_template(tok)  # before the first line is printed
    problems = ADDITION.problems("test", n, seed=seed)
    kwargs = {} if entropy_bound is None else entropy_bound_kwargs(entropy_bound)
    print_fn(f"model: {model_name} ({type(model).__name__}), canvas of {model.config.canvas_length} tokens\n"
             "legend: [x] accepted by the sampler this step, $ = EOS, _ = pad; other positions are re-noised\n")
    results = []
    for i, problem in enumerate(problems):
        batch = prompt_batch([problem.prompt], tokenizer=tok, chat=chat)
        if i == 0 and page is not None:  # the same run, with what the page's lens and attention panels need
            traj = view_capture(model, problem.prompt, tokenizer=tok, chat=chat, seed=seed, attention=True, **kwargs)
        else:
            traj = capture(model, batch["input_ids"], seed=seed + i, **kwargs)
        answer = decode_answers(tok, traj.sequences[:, batch["input_ids"].shape[1]:])[0]
        ok = ADDITION.check(problem, answer)
        results.append(ok)
        print_fn(f"{problem.prompt}  ->  {answer}   ({'correct' if ok else 'WRONG, expected ' + problem.answer})")
        print_fn(f"  step  hf_step  {'input canvas':^{3 * model.config.canvas_length}}   argmax proposal / accepted")
        for s in range(traj.n_steps):
            print_fn(f"  {s:4d}  {int(traj.cur_step[s]):7d}  {show_tokens(traj.input_canvas[s, 0], tokenizer=tok)}"
                     f"   {show_tokens(traj.argmax_canvas[s, 0], traj.accepted[s, 0], tokenizer=tok)}")
        print_fn("")
        if i == 0 and page is not None:
            Path(page).parent.mkdir(parents=True, exist_ok=True)
            path = write_page(traj, page, model=model, tokenizer=tok, title=f"{model_name}: {problem.prompt!r}")
            print_fn(f"viewer page of {problem.prompt!r}: {path} ({path.stat().st_size / 1e3:.0f} kB; open it in a "
                     "browser)\n")
    print_fn(f"{sum(results)}/{len(results)} correct. Next: docs/usage.md shows how to capture activations, "
             "docs/lens.md the logit lens and docs/patching.md patching across steps.")
    return results


def run_flagship_study(name: str = "addition", out: str = "dgt_interp_demo", quick: bool = False,
                       progress: bool = True, print_fn=print):
    """Run case study `name` on its zoo models, write the report to `out/name/`, print where it is."""
    target = Path(out) / name
    print_fn(f"running case study {name!r}{' (quick setting)' if quick else ''} ...")
    report = run_study(name, out=target, quick=quick, progress=progress)
    print_fn(f"case study {name!r} done in {report.numbers['seconds']:.0f} s. Report: {target / 'report.md'} "
             f"(numbers in report.json, {len(report.figures)} figures beside it)")
    return report
