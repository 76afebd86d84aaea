"""`detect_phenomena`: one captured run of a batch of prompts through every registered probe."""

from __future__ import annotations

from dgt_interp.capturing import capture
from dgt_interp.phenomena.commit import commit_order
from dgt_interp.phenomena.drafts import find_drafts
from dgt_interp.phenomena.registry import recorded_names, register_probe, run_probes
from dgt_interp.phenomena.smearing import sequence_smearing, token_smearing
from dgt_interp.tokenizer import decode_until_eos, load_tokenizer, prompt_batch

# The built-in probes, in the order reports list them.
register_probe("commit_argmax", lambda traj, *, eos_id=None: commit_order(traj, by="argmax", eos_id=eos_id,
                                                                             include_eos=False),
               description="commit order by the argmax canvas (EOS excluded)", builtin=True)
register_probe("commit_sampler", lambda traj, *, eos_id=None: commit_order(traj, by="sampler", eos_id=eos_id,
                                                                              include_eos=False),
               description="commit order by what the sampler holds (EOS excluded)", builtin=True)
register_probe("token_smearing", lambda traj, *, eos_id=None: token_smearing(traj, eos_id=eos_id),
               description="mass of each final token at neighbouring offsets", builtin=True)
register_probe("sequence_smearing", lambda traj, *, eos_id=None: sequence_smearing(traj, eos_id=eos_id),
               description="best-shift alignment of intermediate canvases", builtin=True)
register_probe("drafts", lambda traj, *, eos_id=None: find_drafts(traj, eos_id=eos_id),
               description="tokens drafted at intermediate steps and later overwritten", builtin=True)


def detect_phenomena(model, prompts, *, tokenizer=None, eos_id: int | None = None, seed: int = 0,
                     **generation_kwargs):
    """Run `model` on `prompts` (one left-padded batch) and apply every registered probe.

    `prompts`: strings, or objects with `.prompt` and `.answer` (a task's `Problem`s; then the
    exact-match `accuracy` is computed too). `tokenizer`: the model's own (default
    `load_tokenizer(model)`); `eos_id`: the answer's end (default the tokenizer's EOS).

    Returns `(traj, results)`: the captured `Trajectory` (with processed logits) and a dict with
    `accuracy` (None for bare strings) and one entry per registered probe (built-ins:
    `commit_argmax` / `commit_sampler` (`CommitOrder`, EOS excluded), `token_smearing`,
    `sequence_smearing`, `drafts`), and registered probes that need the problems (`Probe.needs`, e.g.
    `register_linear_probe`; run only when `prompts` are `Problem`s, on the activations they declare in
    `Probe.records`, which are then recorded). `generation_kwargs` choose the sampler setting (e.g.
    `sampler_config=...`, or `do_sample=False` for an AR twin).
    """
    tok = tokenizer if tokenizer is not None else load_tokenizer(model)
    eos = tok.eos_token_id if eos_id is None else eos_id
    texts = [p if isinstance(p, str) else p.prompt for p in prompts]
    batch = prompt_batch(texts, tok)
    problems = None if any(isinstance(p, str) for p in prompts) else list(prompts)
    names = recorded_names() if problems is not None else []
    traj = capture(model, batch["input_ids"], attention_mask=batch["attention_mask"], seed=seed,
                   names=names or None, record=("processed_logits",), **generation_kwargs)
    n_prompt = batch["input_ids"].shape[1]
    accuracy = None
    if all(hasattr(p, "answer") for p in prompts):
        answers = [decode_until_eos(tok, r, eos) for r in traj.sequences[:, n_prompt:]]
        accuracy = sum(a == p.answer for a, p in zip(answers, prompts)) / len(prompts)
    return traj, {"accuracy": accuracy, **run_probes(traj, eos_id=eos, problems=problems)}


__all__ = ["detect_phenomena"]
