"""Generate answers with a model's own `generate` and score exact match on a task.

This is the one place that turns prompts into batched, left-padded ids and generated ids back into
answers; training, the zoo checks, the demo and the bottleneck table all go through it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from dgt_interp.backends.devices import execution_device
from dgt_interp.capturing import capture, check_generation_kwargs
from dgt_interp.models.load import is_diffusion
from dgt_interp.stats import wilson_interval
from dgt_interp.tasks import EOS_ID, Problem, Task, build_tokenizer, decode_answer, is_task_tokenizer
from dgt_interp.tokenizer import TokenizerError, decode_until_eos, load_tokenizer
from dgt_interp.tokenizer import prompt_batch as tokenizer_prompt_batch


def prompt_batch(prompts: list[str], max_positions: int | None = None, tokenizer=None, chat: bool = False
                 ) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids` and `attention_mask` `[batch, pos]` for task prompts (BOS prepended):
    `dgt_interp.tokenizer.prompt_batch` with the tasks' character tokenizer unless `tokenizer` is given."""
    return tokenizer_prompt_batch(prompts, tokenizer if tokenizer is not None else build_tokenizer(),
                                  max_positions=max_positions, chat=chat)


def task_tokenizer(model, tokenizer=None):
    """The tokenizer task text goes through: `tokenizer` if given, else the model's own
    (`load_tokenizer(model)`), else (a bare model) the tasks' character tokenizer."""
    if tokenizer is not None:
        return tokenizer
    try:
        return load_tokenizer(model)
    except TokenizerError:
        return build_tokenizer()


def decode_answers(tokenizer, new_ids) -> list[str]:
    """Answer text per row of generated ids `[batch, new_pos]`: the tasks' `decode_answer` for their
    character tokenizer (ids outside the task alphabet shown as U+FFFD), else `decode_until_eos`."""
    if is_task_tokenizer(tokenizer):
        return [decode_answer(row) for row in new_ids]
    return [decode_until_eos(tokenizer, row) for row in new_ids]


def _max_prompt_positions(model, max_new_tokens: int) -> int:
    return model.config.get_text_config().max_position_embeddings - max_new_tokens


@dataclass
class Generation:
    """Answers and per-row generated ids for a batch of prompts."""

    answers: list[str]
    new_ids: torch.Tensor  # [batch, new_pos]
    decoder_passes: torch.Tensor | None  # [batch] denoising forward passes (diffusion only)


@torch.no_grad()
def generate_answers(model, prompts: list[str], *, seed: int = 0, fwd_hooks=(), tokenizer=None, chat: bool = False,
                     **generation_kwargs) -> Generation:
    """Run `model.generate` once on `prompts` (left-padded batch) after `torch.manual_seed(seed)`.

    Prompts go through `task_tokenizer(model, tokenizer)` (`chat=True`: its chat template). With
    `fwd_hooks` (TL-style `[(hook_name, fn)]`, e.g. a token bottleneck) the same generation runs
    through `dgt_interp.capture` with those hooks applied at every step.
    """
    tok = task_tokenizer(model, tokenizer)
    if generation_kwargs:  # generate would drop unknown settings silently
        check_generation_kwargs(model, generation_kwargs)
    max_new = generation_kwargs.get("max_new_tokens") or model.generation_config.max_new_tokens
    batch = prompt_batch(prompts, _max_prompt_positions(model, max_new), tokenizer=tok, chat=chat)
    batch = {k: v.to(execution_device(model)) for k, v in batch.items()}  # model.device is meta when offloaded
    prompt_len = batch["input_ids"].shape[1]
    passes = None
    if fwd_hooks:
        traj = capture(model, batch["input_ids"], attention_mask=batch["attention_mask"], names=(), seed=seed,
                       fwd_hooks=list(fwd_hooks), **generation_kwargs)
        new_ids = traj.sequences[:, prompt_len:].cpu()
        if is_diffusion(model):
            passes = traj.active.sum(0).long()
    elif is_diffusion(model):
        torch.manual_seed(seed)
        out = model.generate(**batch, **generation_kwargs)
        new_ids = out.sequences[:, prompt_len:].cpu()
        valid = (new_ids != tok.pad_token_id).sum(-1).float()
        passes = torch.round(valid / out.tokens_per_forward.cpu().float()).long()
    else:
        torch.manual_seed(seed)
        new_ids = model.generate(**batch, **generation_kwargs)[:, prompt_len:].cpu()
    return Generation(decode_answers(tok, new_ids), new_ids, passes)


def is_degenerate(new_ids, eos_id: int = EOS_ID, reference_ids: list[int] | None = None) -> bool:
    """*(ours)* A generation is degenerate if it never emits EOS, or if it contains a repetition
    loop (a unit of 1-3 tokens repeated 4+ times in a row) that the reference answer does not contain.
    """
    ids = [int(x) for x in new_ids]
    if eos_id not in ids:
        return True
    body = ids[: ids.index(eos_id)]

    def loops(seq):
        found = set()
        for unit in (1, 2, 3):
            for start in range(len(seq) - 4 * unit + 1):
                chunk = seq[start:start + unit]
                if all(seq[start + r * unit:start + (r + 1) * unit] == chunk for r in range(4)):
                    found.add(tuple(chunk))
        return found

    ref = loops(reference_ids) if reference_ids is not None else set()
    return bool(loops(body) - ref)


@dataclass
class EvalResult:
    task: str
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    mean_decoder_passes: float | None
    degenerate: int
    settings: dict

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    model,
    task: Task,
    *,
    n: int = 1000,
    seed: int = 0,
    batch_size: int = 250,
    split: str = "test",
    problems: list[Problem] | None = None,
    progress: bool = False,
    fwd_hooks=(),
    tokenizer=None,
    chat: bool = False,
    **generation_kwargs,
) -> EvalResult:
    """Exact match of `model.generate` on `n` held-out problems of `task`.

    Batch b is generated after `torch.manual_seed(seed + b)`; `generation_kwargs` go to `generate`
    (e.g. `max_denoising_steps`, `t_min`, `sampler_config`); `fwd_hooks` (TL-style) edit the run,
    e.g. a token bottleneck. Also counts degenerate generations (`is_degenerate`). Text goes through
    `task_tokenizer(model, tokenizer)` (`chat=True`: its chat template).
    """
    tok = task_tokenizer(model, tokenizer)
    problems = problems if problems is not None else task.problems(split, n, seed=seed)
    correct, degenerate, passes = 0, 0, []
    chunks = range(0, len(problems), batch_size)
    if progress:
        chunks = tqdm(chunks, desc=f"eval {task.name}", unit="batch")
    for b, start in enumerate(chunks):
        chunk = problems[start:start + batch_size]
        gen = generate_answers(model, [p.prompt for p in chunk], seed=seed + b, fwd_hooks=fwd_hooks, tokenizer=tok,
                               chat=chat, **generation_kwargs)
        correct += sum(task.check(p, a) for p, a in zip(chunk, gen.answers))
        degenerate += sum(is_degenerate(row, tok.eos_token_id, tok(p.answer, add_special_tokens=False)["input_ids"])
                          for p, row in zip(chunk, gen.new_ids))
        if gen.decoder_passes is not None:
            passes.append(gen.decoder_passes.float())
    mean_passes = float(torch.cat(passes).mean()) if passes else None
    settings = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v))
                for k, v in generation_kwargs.items()}
    return EvalResult(task.name, len(problems), correct, correct / len(problems),
                      wilson_interval(correct, len(problems)), mean_passes, degenerate, settings)
