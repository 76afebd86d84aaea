"""Activation patching across layers *and denoising steps*, batched, with replayed sampler noise.

Context (as in TransformerLens' `patching`): run the model on a clean and a corrupted input, then
re-run the corrupted input while replacing (patching) one activation by its value on the clean run,
and measure how far the output moves towards the clean answer. On a diffusion LM a run is many
decoder passes, so a *site* is (step, hook name, position, head): the patch is applied at that
denoising step and the run then *continues denoising* with the real HF `generate`
(`dgt_interp.capture` with `fwd_hooks`), so its effect can travel through the sampler and the
self-conditioning channel to the final output.

Randomness. A patched run must differ from the corrupted run only because of the patch. All runs
here (clean, corrupted, patched) replay one fixed noise table drawn from `seed`: per canvas c and
step k the initial canvas, the exponential noise that `torch.multinomial` turns into a sample
(argmax(probs / noise), exactly what torch does for one sample) and the re-noising tokens. Every
row of a batch gets the same table, so K patched copies along the batch dimension give the same
numbers as K one-patch runs (tested), and early-stopped rows cannot shift the stream of other rows.
For canvas 0 the table is exactly the stream HF's own batch-1 `generate` draws after
`torch.manual_seed(seed)`, so the clean and corrupted runs equal plain `capture(model, ids,
seed=seed)` (tested); later canvases start where canvas c-1 would have ended after all
`max_denoising_steps` steps (they differ from plain `generate` only when an earlier canvas stopped
early). Adaptive stopping is left on. The AR twin must decode greedily (no noise at all).

Sites and positions. Positions index the hook tensor as it fires: canvas positions on DiffusionGemma;
on the AR twin step 0 is the prompt forward (prompt positions) and each later step sees one position.
Special sites: `self_cond.hook_logits_in` (the previous step's processed logits entering the decoder:
the self-conditioning channel; absent at a canvas's first step) and `hook_embed` (the canvas tokens:
tokens enter a step only through their embeddings, since the sampler overwrites every position, so
patching the embedding at step s is patching the input canvas at step s). The prompt path:
`blocks.{l}.hook_cache_k` / `hook_cache_v` (the encoder KV cache decoder layer l reads at a step;
positions = cached positions). `layer_sites(p, l, step)` lists every site of a layer: patched
together they make that step's decoder output the clean one exactly.

Metrics are per row `[batch]` (TL's `reduce="mean"` convention) and are evaluated on the final
output (each canvas's logits at the row's last active step; AR: the logits of each generated token)
or on any intermediate step (`metric.step`): `LogitDiff`, `AnswerProb`, `ExactMatch`, or any
`fn(logits [batch, pos, vocab]) -> [batch]`. Sweeps return the metric on the patched runs averaged
over the prompt batch; `normalise(values, clean, corrupted)` gives TL's (patched - corrupted) /
(clean - corrupted).

    >>> p = Patching(model, clean_ids, corrupted_ids, seed=0)
    >>> metric = LogitDiff(pos=0, correct=clean_tok, wrong=corrupted_tok)
    >>> grid = get_act_patch_resid_pre(p, metric)          # [step, layer, pos]
    >>> normalise(grid, p.clean_metric(metric), p.corrupted_metric(metric))

Cells where a hook does not fire (self-conditioning at a canvas's first step, AR positions past the
one a step processes) or a step the run did not reach are NaN.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from dgt_interp.backends.tl import DIFFUSION_ARCH, architecture_of, bridge_for
from dgt_interp.names import level_for, name_info, natural_key, resolve_names


class PatchingError(ValueError):
    """Bad patching arguments (one-line message that says what to do)."""


# ---------------------------------------------------------------------------------------------
# sites
# ---------------------------------------------------------------------------------------------

Index = int | slice | Sequence[int] | None


@dataclass(frozen=True)
class Site:
    """One patch: replace hook `name` at `step`, positions `pos`, heads `head` by the clean run's values.

    `step`, `pos` and `head` take an int, a slice, a list of ints, or None (= all). `head` needs a
    hook with a head axis (`[batch, pos, head, d_head]`, e.g. `blocks.0.attn.hook_z`).
    """

    name: str
    step: Index = None
    pos: Index = None
    head: Index = None


def _indices(spec: Index, bound: int, what: str, hint: str) -> list[int]:
    """int / slice / list / None -> sorted indices in [0, bound); one-line error if out of range."""
    if spec is None:
        return list(range(bound))
    if isinstance(spec, slice):
        return list(range(bound))[spec]
    items = [spec] if isinstance(spec, int) else list(spec)
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int):
            raise PatchingError(f"{what} {i!r} is not an int; pass ints, a slice or a list of ints")
        if not 0 <= i < bound:
            raise PatchingError(f"{what} {i} is out of range: valid {what}s are 0..{bound - 1} ({hint})")
    return sorted(set(items))


# ---------------------------------------------------------------------------------------------
# replayed sampler noise (DiffusionGemma)
# ---------------------------------------------------------------------------------------------


class NoiseTable:
    """Sampler noise per (canvas, step), drawn once from `seed` in the order HF's batch-1 `generate` draws it.

    Per canvas: `init` `[1, L]` (uniform tokens), then per step k: `exp[k]` `[L, V]` (the exponential
    noise `torch.multinomial` divides the probabilities by) and `renoise[k]` `[1, L]`.
    Memory: max_denoising_steps * L * V * 4 bytes per canvas used.
    """

    def __init__(self, seed: int, vocab: int, canvas_length: int, max_steps: int, device):
        self.seed, self.vocab, self.length, self.max_steps = seed, vocab, canvas_length, max_steps
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.canvases: list[tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]] = []

    def canvas(self, c: int):
        while len(self.canvases) <= c:
            g, v, n = self.gen, self.vocab, self.length
            init = torch.randint(0, v, (1, n), generator=g, device=self.device)
            exps, renoise = [], []
            for _ in range(self.max_steps):
                exps.append(torch.empty((n, v), dtype=torch.float32, device=self.device).exponential_(generator=g))
                renoise.append(torch.randint(0, v, (1, n), generator=g, device=self.device))
            self.canvases.append((init, exps, renoise))
        return self.canvases[c]


class _ReplaySampler:
    """Wraps the sampler `generate` built (capture's recording one): same acceptance, replayed noise."""

    def __init__(self, inner, table: NoiseTable, canvas: int):
        self.inner, self.table, self.c = inner, table, canvas

    @property
    def accepted_token_mask(self):
        return self.inner.accepted_token_mask

    def initialize_canvas(self, batch_size: int, device) -> torch.Tensor:
        return self.table.canvas(self.c)[0].to(device).expand(batch_size, -1).clone()

    def _k(self, cur_step) -> int:
        return self.table.max_steps - int(cur_step)

    def accept_canvas(self, current_canvas, denoiser_canvas, logits, cur_step):
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # as HF's _denoising_step
        noise = self.table.canvas(self.c)[1][self._k(cur_step)].to(probs.device)
        replayed = (probs / noise).argmax(-1)  # = torch.multinomial(probs, 1) with this noise
        return self.inner.accept_canvas(current_canvas, replayed, logits, cur_step)

    def renoise_canvas(self, accepted_canvas, cur_step):
        fresh = self.table.canvas(self.c)[2][self._k(cur_step)].to(accepted_canvas.device)
        return torch.where(~self.inner.accepted_token_mask, fresh.expand_as(accepted_canvas), accepted_canvas)


_REPLAY_CLASSES: dict[type, type] = {}


def _replay_class(cls: type) -> type:
    """A subclass of the twin's HF class whose denoising loop uses `_ReplaySampler` (cached per class)."""
    if cls not in _REPLAY_CLASSES:

        class Replaying(cls):
            def _prepare_denoiser_inputs(self, **kw):
                state = self.__dict__["_dgt_replay"]
                state["sampler"] = _ReplaySampler(kw["sampler"], state["table"], state["canvas"])
                state["canvas"] += 1
                kw["sampler"] = state["sampler"]
                return super()._prepare_denoiser_inputs(**kw)

            def _denoising_step(self, **kw):
                kw["sampler"] = self.__dict__["_dgt_replay"]["sampler"]
                return super()._denoising_step(**kw)

        Replaying.__name__ = Replaying.__qualname__ = f"Replaying{cls.__name__}"
        _REPLAY_CLASSES[cls] = Replaying
    return _REPLAY_CLASSES[cls]


@contextmanager
def _replaying(model, table: NoiseTable | None, hook_names: list[str]):
    """While active, the twin `capture` will use (same bridge level) replays `table`.

    Works around capture having no sampler argument: the twin's class is swapped for a subclass
    for the duration of the run and restored after.
    """
    if table is None:
        yield
        return
    twin = bridge_for(model, level_for(model, hook_names)).twin
    original = twin.__class__
    twin.__class__ = _replay_class(original)
    twin.__dict__["_dgt_replay"] = {"table": table, "canvas": 0, "sampler": None}
    try:
        yield
    finally:
        twin.__class__ = original
        twin.__dict__.pop("_dgt_replay", None)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def _as_list(x) -> list[int]:
    return [int(x)] if isinstance(x, int) else [int(i) for i in x]


@dataclass
class LogitDiff:
    """logit[correct] - logit[wrong] at output position(s) `pos`, summed over positions. `[batch]`.

    `correct`/`wrong`: one token id per position (or one id for all). `step`: None = final output,
    an int = the logits of that denoising step (execution order).
    """

    pos: int | Sequence[int]
    correct: int | Sequence[int]
    wrong: int | Sequence[int]
    step: int | None = None

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        pos = _as_list(self.pos)
        c, w = _broadcast(self.correct, pos), _broadcast(self.wrong, pos)
        lp = logits[:, pos].float()
        idx = torch.arange(len(pos))
        return (lp[:, idx, c] - lp[:, idx, w]).sum(-1)


@dataclass
class AnswerProb:
    """Probability of the answer `tokens` at positions `pos`: product of the per-position softmax
    probabilities (the chance that every position's token is right under the model's marginals). `[batch]`."""

    pos: int | Sequence[int]
    tokens: int | Sequence[int]
    step: int | None = None

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        pos = _as_list(self.pos)
        t = _broadcast(self.tokens, pos)
        lp = torch.log_softmax(logits[:, pos].float(), -1)
        return lp[:, torch.arange(len(pos)), t].sum(-1).exp()


@dataclass
class ExactMatch:
    """1.0 where the emitted tokens at `pos` equal `tokens` (all of them), else 0.0. `[batch]`.

    Emitted tokens: the argmax canvas the run emits (final) or holds after `step`.
    """

    pos: int | Sequence[int]
    tokens: int | Sequence[int]
    step: int | None = None

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        pos = _as_list(self.pos)
        emitted = tokens[:, pos] if tokens is not None else logits[:, pos].argmax(-1)
        want = torch.tensor(_broadcast(self.tokens, pos), device=emitted.device)
        return (emitted == want).all(-1).float()


def _broadcast(tok, pos: list[int]) -> list[int]:
    toks = _as_list(tok)
    if len(toks) == 1:
        return toks * len(pos)
    if len(toks) != len(pos):
        raise PatchingError(f"{len(toks)} answer tokens for {len(pos)} positions; give one token per position")
    return toks


def normalise(values: torch.Tensor, clean: float | torch.Tensor, corrupted: float | torch.Tensor) -> torch.Tensor:
    """TL's normalised recovery: (patched - corrupted) / (clean - corrupted); 0 = no effect, 1 = clean restored."""
    return (values - corrupted) / (clean - corrupted)


def _call_metric(metric, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    params = inspect.signature(metric).parameters if callable(metric) else {}
    out = metric(logits, tokens) if len(params) >= 2 else metric(logits)
    out = torch.as_tensor(out)
    if out.ndim != 1 or out.shape[0] != logits.shape[0]:
        raise PatchingError(f"the metric must return one value per row ([batch] = [{logits.shape[0]}]), "
                            f"got shape {tuple(out.shape)}")
    return out.float()


def run_outputs(traj, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits `[batch, pos, vocab]`, emitted tokens `[batch, pos]`) of a run recorded with `record=("logits",)`.

    step None = the final output: DiffusionGemma: per canvas, each row's logits at its last active
    step (canvases concatenated along pos) and the emitted argmax canvas; AR: the logits of every
    generated token. step s = the state after execution step s (a row that had stopped keeps its
    final values).
    """
    return select_outputs(traj.kind, traj["logits"], traj.argmax_canvas, traj.active, traj.canvas, step)


def select_outputs(kind: str, logits: torch.Tensor, argmax: torch.Tensor, active: torch.Tensor, canvas: torch.Tensor,
                   step: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`run_outputs` on per-step tensors: logits `[S, batch, pos, vocab]`, argmax `[S, batch, pos]`,
    active `[S, batch]`, canvas `[S]` (the Trajectory records)."""
    if kind == "ar":
        s = logits.shape[0] - 1 if step is None else min(step, logits.shape[0] - 1)
        return logits[s], argmax[s]
    n_rows = active.shape[1]
    rows = torch.arange(n_rows)

    def last_active(steps: list[int]) -> torch.Tensor:
        idx = torch.tensor(steps)
        pick = torch.where(active[idx], torch.arange(len(steps))[:, None], -1).amax(0)
        return idx[pick.clamp(min=0)]

    if step is not None:
        c = int(canvas[min(step, len(canvas) - 1)])
        s = last_active([i for i in range(len(canvas)) if int(canvas[i]) == c and i <= step])
        return logits[s, rows], argmax[s, rows]
    outs, toks = [], []
    for c in sorted(set(canvas.tolist())):
        s = last_active([i for i in range(len(canvas)) if int(canvas[i]) == c])
        outs.append(logits[s, rows])
        toks.append(argmax[s, rows])
    return torch.cat(outs, 1), torch.cat(toks, 1)


def metric_values(traj, metric) -> torch.Tensor:
    """`[batch]` metric values of a recorded run (at `metric.step` if the metric has one, else final)."""
    logits, tokens = run_outputs(traj, getattr(metric, "step", None))
    return _call_metric(metric, logits, tokens)


# ---------------------------------------------------------------------------------------------
# the experiment: clean + corrupted run with the same noise
# ---------------------------------------------------------------------------------------------


class Patching:
    """A clean and a corrupted run of `model` that replay the same sampler noise, and what patches need.

    Args:
        model: `DiffusionGemmaForBlockDiffusion` or the AR twin `Gemma4ForCausalLM` (greedy decoding).
        clean_ids, corrupted_ids: `[batch, pos]` prompts of the same shape (left-padded batches: pass
            `attention_mask=` (clean) and `corrupted_attention_mask=`).
        seed: the sampler noise table's seed (the runs equal `capture(..., seed=seed)` for canvas 0).
        names: hook names / globs whose clean activations to keep up front (more are fetched on
            demand by re-running the clean run).
        **generation_kwargs: passed to every `generate` (max_denoising_steps, sampler_config, ...).

    Attributes: `clean`, `corrupted` (Trajectory, with logits), `n_steps` (steps both runs reached:
    the step axis of every sweep), `kind` ("diffusion" | "ar").
    """

    def __init__(self, model, clean_ids: torch.Tensor, corrupted_ids: torch.Tensor, *, seed: int = 0,
                 attention_mask: torch.Tensor | None = None, corrupted_attention_mask: torch.Tensor | None = None,
                 names=(), **generation_kwargs):
        self.kind = "diffusion" if architecture_of(model) == DIFFUSION_ARCH else "ar"
        for what, t in (("clean_ids", clean_ids), ("corrupted_ids", corrupted_ids)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.is_floating_point():
                raise PatchingError(f"{what} must be a 2-D integer tensor [batch, pos]; build it with "
                                    "dgt_interp.evaluate.prompt_batch")
        if clean_ids.shape != corrupted_ids.shape:
            raise PatchingError(f"clean and corrupted prompts differ in shape ({tuple(clean_ids.shape)} vs "
                                f"{tuple(corrupted_ids.shape)}); patching needs equal lengths: pad or pick "
                                "prompts with the same number of tokens")
        self.model, self.seed, self.generation_kwargs = model, seed, dict(generation_kwargs)
        self.ids = {"clean": clean_ids, "corrupted": corrupted_ids}
        if corrupted_attention_mask is None:
            corrupted_attention_mask = attention_mask
        self.masks = {"clean": attention_mask, "corrupted": corrupted_attention_mask}
        self.batch = clean_ids.shape[0]
        if self.kind == "diffusion":
            cfg, _ = model._prepare_generation_config(
                None, **{k: v for k, v in generation_kwargs.items() if k != "attention_mask"})
            self.table = NoiseTable(seed, model.config.get_text_config().vocab_size, model.config.canvas_length,
                                    cfg.max_denoising_steps, model.device)
        else:
            cfg, _ = model._prepare_generation_config(None, **generation_kwargs)
            if cfg.do_sample:
                raise PatchingError("AR patching needs greedy decoding (sampling noise is not replayed); "
                                    "pass do_sample=False")
            self.table = None
        self._acts: dict[tuple[str, int], torch.Tensor] = {}
        self._stashed: set[str] = set()
        self._names: dict[str, list[str]] = {}  # pattern -> resolved names (resolution is not free)
        self._layouts: dict[str, str | None] = {}
        self.clean = self._reference("clean", names)
        self.corrupted = self._reference("corrupted", ())
        self.n_steps = min(self.clean.n_steps, self.corrupted.n_steps)

    # -- runs -----------------------------------------------------------------------------------
    def _capture(self, which: str, copies: int = 1, fwd_hooks=(), record=("logits",)):
        from dgt_interp import capture

        ids, mask = self.ids[which], self.masks[which]
        kwargs = dict(self.generation_kwargs)
        if mask is not None:
            kwargs["attention_mask"] = mask.repeat(copies, 1)
        fwd_hooks = list(fwd_hooks)
        with _replaying(self.model, self.table, self.resolve([n for n, _ in fwd_hooks])):
            return capture(self.model, ids.repeat(copies, 1), names=(), seed=self.seed, record=record,
                           fwd_hooks=fwd_hooks, **kwargs)

    def resolve(self, names) -> list[str]:
        """Hook names / globs -> concrete names (cached; one-line error for unknown names)."""
        names = [names] if isinstance(names, str) else list(names)
        out: list[str] = []
        for pat in names:
            if pat not in self._names:
                self._names[pat] = resolve_names(self.model, [pat])
            out += [n for n in self._names[pat] if n not in out]
        return out

    def _reference(self, which: str, names) -> "object":
        names = self.resolve(names)
        traj = self._capture(which, fwd_hooks=self._stash_hooks(names))
        self._stashed |= set(names)
        return traj

    def _stash_hooks(self, names: list[str]):
        def stash(name):
            def fn(t, hook, step):
                self._acts[(name, step)] = t.detach().clone()

            return fn

        return [(n, stash(n)) for n in names]

    def need(self, names) -> list[str]:
        """Make sure the clean activations of `names` (globs) are held; returns the resolved names."""
        resolved = self.resolve(names)
        missing = [n for n in resolved if n not in self._stashed]
        if missing:
            self._capture("clean", fwd_hooks=self._stash_hooks(missing), record=())
            self._stashed |= set(missing)
        return resolved

    def clean_activation(self, name: str, step: int) -> torch.Tensor | None:
        """The clean run's `name` at `step` as the hook saw it (`[batch, pos, ...]`), None if it did not fire."""
        self.need([name])
        return self._acts.get((name, step))

    def clean_metric(self, metric) -> float:
        """The metric on the clean run, averaged over the prompt batch."""
        return float(metric_values(self.clean, metric).mean())

    def corrupted_metric(self, metric) -> float:
        """The metric on the (unpatched) corrupted run, averaged over the prompt batch."""
        return float(metric_values(self.corrupted, metric).mean())

    def positions(self, name: str, step: int) -> int:
        """How many positions hook `name` has at `step` (0 if it did not fire)."""
        t = self.clean_activation(name, step)
        return 0 if t is None else self._rows_pos(name, t)[1]

    def _rows_pos(self, name: str, t: torch.Tensor) -> tuple[int, int]:
        if self._layout(name) == "flat":
            rows = self.batch
            return rows, t.shape[0] // rows
        return t.shape[0], t.shape[1]

    # -- patched runs ---------------------------------------------------------------------------
    def _resolve(self, site: Site) -> list[tuple[str, int, list[int], list[int] | None]]:
        """Site -> [(name, step, positions, heads)] checked against the clean activations."""
        names = self.resolve([site.name])
        steps = _indices(site.step, self.n_steps, "step",
                         f"both runs reached {self.n_steps} steps")
        out = []
        for name in names:
            self.need([name])
            for s in steps:
                t = self._acts.get((name, s))
                if t is None:
                    if isinstance(site.step, int):
                        raise PatchingError(f"{name} does not fire at step {s} (self-conditioning is absent at a "
                                            "canvas's first step); pick another step")
                    continue
                n_pos = self._rows_pos(name, t)[1]
                pos = _indices(site.pos, n_pos, "position", f"{name} has {n_pos} positions at step {s}")
                heads = None
                if site.head is not None:
                    if self._layout(name) == "flat" or t.dim() < 4:
                        raise PatchingError(f"{name} has no head axis ([batch, pos, head, d_head]); patch heads "
                                            "at blocks.{l}.attn.hook_z")
                    heads = _indices(site.head, t.shape[2], "head", f"{name} has {t.shape[2]} heads")
                out.append((name, s, pos, heads))
        return out

    def _layout(self, name: str):
        if name not in self._layouts:
            self._layouts[name] = name_info(self.model, name, "full")[1]
        return self._layouts[name]

    def _patch_hooks(self, copies: list[list[Site]], value=None):
        """One TL hook per hook name that writes each copy's sites (copy k = rows k*B .. k*B+B-1).

        What is written: `value(current, clean)` of the selected slices, default the clean activation."""
        plan: dict[str, dict[int, list[tuple[int, list[int], list[int] | None]]]] = {}
        for k, sites in enumerate(copies):
            for site in sites:
                for name, s, pos, heads in self._resolve(site):
                    plan.setdefault(name, {}).setdefault(s, []).append((k, pos, heads))
        b = self.batch

        def hook_for(name):
            flat = self._layout(name) == "flat"

            def fn(t, hook, step):
                todo = plan[name].get(step)
                if not todo:
                    return None
                clean = self._acts[(name, step)]
                out = t.clone()
                view, src = out, clean
                if flat:  # [rows * pos, ...] -> [rows, pos, ...]
                    n_pos = clean.shape[0] // b
                    view, src = out.view(-1, n_pos, *out.shape[1:]), clean.view(b, n_pos, *clean.shape[1:])
                for k, pos, heads in todo:
                    p = torch.tensor(pos, device=out.device)
                    at = (p,) if heads is None else (p[:, None], torch.tensor(heads, device=out.device))
                    rows = slice(k * b, (k + 1) * b)
                    new = src[(slice(None), *at)] if value is None else value(view[(rows, *at)], src[(slice(None), *at)])
                    view[(rows, *at)] = new.to(out.dtype)
                return out

            return fn

        return [(name, hook_for(name)) for name in plan]

    def run(self, sites: Site | Sequence[Site] = (), *, record=("logits",)):
        """One corrupted run with `sites` patched from the clean run; returns its Trajectory."""
        sites = [sites] if isinstance(sites, Site) else list(sites)
        return self._capture("corrupted", fwd_hooks=self._patch_hooks([sites]), record=record)

    def iter_patches(self, patches: Sequence[Site | Sequence[Site]], metric, *, batch_size: int = 64,
                     progress: bool = False, value=None) -> Iterator[tuple[int, torch.Tensor]]:
        """Run many patched copies, `batch_size` per `generate` along the batch axis; stream results.

        Yields `(start, values)` per chunk: `values[i]` (`[chunk]`, averaged over the prompt batch)
        belongs to `patches[start + i]`. Nothing but the chunk's logits is held. `value(current,
        clean)`, if given, is what each site gets instead of its clean activation.
        """
        patches = [[p] if isinstance(p, Site) else list(p) for p in patches]
        if batch_size < 1:
            raise PatchingError(f"batch_size must be >= 1, got {batch_size}")
        for sites in patches:  # validate everything before the first run
            for site in sites:
                self._resolve(site)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(patches), desc="patching", unit="patch")
        try:
            for start in range(0, len(patches), batch_size):
                chunk = patches[start:start + batch_size]
                traj = self._capture("corrupted", copies=len(chunk), fwd_hooks=self._patch_hooks(chunk, value))
                values = metric_values(traj, metric).view(len(chunk), self.batch).mean(-1)
                if bar is not None:
                    bar.update(len(chunk))
                yield start, values
        finally:
            if bar is not None:
                bar.close()

    def run_patches(self, patches, metric, *, batch_size: int = 64, progress: bool = False, value=None) -> torch.Tensor:
        """`[n_patches]` metric values (see `iter_patches`); batch_size=1 = one generate per patch."""
        out = torch.full((len(patches),), float("nan"))
        for start, values in self.iter_patches(patches, metric, batch_size=batch_size, progress=progress, value=value):
            out[start:start + len(values)] = values
        return out

    def rounding_noise(self, metric, pattern: str = "blocks.*.hook_resid_pre", *, n: int = 256, seed: int = 0,
                       batch_size: int = 256) -> float:
        """How far float rounding alone moves the metric: the largest |effect| of `n` one-ulp nudges.

        Any patch perturbs every later float operation, so even a site whose true effect is 1e-30
        (an early step whose influence has decayed) moves the metric by a few ulps. Sweep cells
        with |patched - corrupted| at or below this are rounding, not effects, and their order is
        noise (compare rankings, e.g. attribution vs the exact sweep, above it). Each copy nudges one
        random (step, layer, position) site of `pattern` up by one ulp (`torch.nextafter`) in
        batched corrupted runs; returns max |metric - corrupted metric| (averaged over the prompt batch).
        """
        names = _layer_names(self, pattern)
        self.need(names)
        sites = [Site(nm, s, q) for nm in names for s in range(self.n_steps) for q in range(self.positions(nm, s))]
        if not sites:
            raise PatchingError(f"{pattern!r} fires at none of the {self.n_steps} steps; pick another hook")
        if n < 1 or batch_size < 1:
            raise PatchingError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        pick = torch.randint(len(sites), (n,), generator=torch.Generator().manual_seed(seed)).tolist()

        def nudge(current, clean):
            return torch.nextafter(current, torch.full_like(current, math.inf))

        values = self.run_patches([sites[i] for i in pick], metric, batch_size=batch_size, value=nudge)
        return float((values - self.corrupted_metric(metric)).abs().max())


def layer_sites(p: Patching, layer: int, step: Index = None, *, prompt: bool = True) -> list[Site]:
    """Every site of decoder layer `layer` at `step` (None = every step): a complete cut of the run there.

    On DiffusionGemma the canvas reaches layer `layer` as `blocks.{layer}.hook_resid_pre` (all
    positions), and the prompt as the encoder KV cache: the prompt's residual at that layer enters
    the decoder only through the cached keys/values of layers `layer`..L-1
    (`blocks.{l}.hook_cache_k/v`), so with `prompt=True` those are patched too. Patched from the
    clean run, the step's decoder output is the clean one exactly (at every step: the clean run).
    `prompt=False` gives the canvas side alone. AR twin: the prompt is step 0's positions, so the
    residual alone is the whole layer.
    """
    n_layers = p.model.config.get_text_config().num_hidden_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise PatchingError(f"layer {layer!r} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    sites = [Site(f"blocks.{layer}.hook_resid_pre", step)]
    if prompt and p.kind == "diffusion":
        sites += [Site(f"blocks.{l}.hook_cache_{kv}", step) for l in range(layer, n_layers) for kv in "kv"]
    return sites


def patch_run(model, clean_ids, corrupted_ids, sites, *, seed: int = 0, **kwargs):
    """One-shot: the corrupted run with `sites` patched from the clean run (Trajectory, with logits)."""
    return Patching(model, clean_ids, corrupted_ids, seed=seed, **kwargs).run(sites)


# ---------------------------------------------------------------------------------------------
# sweeps with a step axis
# ---------------------------------------------------------------------------------------------


def _layer_names(p: Patching, pattern: str) -> list[str]:
    names = sorted(p.resolve([pattern]), key=natural_key)
    if not names:
        raise PatchingError(f"no hook name matches {pattern!r}; print(dgt_interp.describe_names(model)) lists them")
    return names


def get_act_patch(p: Patching, pattern: str, metric, *, by: str = "pos", steps: Index = None, layers: Index = None,
                  positions: Index = None, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Generic sweep: patch each (step, layer[, pos][, head]) cell of hook `pattern` alone.

    `pattern`: one hook name or a glob with `*` for the layer (`"blocks.*.hook_resid_pre"`).
    `by`: "pos" -> `[step, layer, pos]`; "head" -> `[step, layer, pos, head]` (per position and
    head; needs a head axis); "layer" -> `[step, layer]` (all positions at once). A name without a
    layer gives a layer axis of length 1. NaN marks cells where the hook does not fire.
    """
    if by not in ("pos", "head", "layer"):
        raise PatchingError(f"by={by!r}: use 'pos', 'head' or 'layer'")
    names = _layer_names(p, pattern)
    p.need(names)
    layer_idx = _indices(layers, len(names), "layer", f"{pattern!r} matches {len(names)} names")
    names = [names[i] for i in layer_idx]
    step_idx = _indices(steps, p.n_steps, "step", f"both runs reached {p.n_steps} steps")
    max_pos = max((p.positions(n, s) for n in names for s in step_idx), default=0)
    n_heads = 0
    if by == "head":
        t = next((p.clean_activation(n, s) for n in names for s in step_idx if p.clean_activation(n, s) is not None), None)
        if t is None or t.dim() < 4 or p._layout(names[0]) == "flat":
            raise PatchingError(f"{pattern!r} has no head axis ([batch, pos, head, d_head]); use "
                                "blocks.*.attn.hook_z for per-head patching")
        n_heads = t.shape[2]
    cells, patches = [], []
    for i, s in enumerate(step_idx):
        for j, name in enumerate(names):
            n_pos = p.positions(name, s)
            if n_pos == 0:
                continue
            if by == "layer":
                cells.append((i, j))
                patches.append(Site(name, s))
                continue
            for q in _indices(positions, max_pos, "position", f"at most {max_pos} positions"):
                if q >= n_pos:
                    continue
                if by == "pos":
                    cells.append((i, j, q))
                    patches.append(Site(name, s, q))
                else:
                    for h in range(n_heads):
                        cells.append((i, j, q, h))
                        patches.append(Site(name, s, q, h))
    shape = {"layer": (len(step_idx), len(names)), "pos": (len(step_idx), len(names), max_pos),
             "head": (len(step_idx), len(names), max_pos, n_heads)}[by]
    out = torch.full(shape, float("nan"))
    for start, values in p.iter_patches(patches, metric, batch_size=batch_size, progress=progress):
        for c, v in zip(cells[start:start + len(values)], values):
            out[c] = v
    if by != "layer" and positions is not None:
        keep = _indices(positions, max_pos, "position", "")
        out = out[:, :, keep]
    return out


def get_act_patch_resid_pre(p: Patching, metric, **kw) -> torch.Tensor:
    """Patch the residual stream at the start of each block, per (step, layer, pos). `[step, layer, pos]`."""
    return get_act_patch(p, "blocks.*.hook_resid_pre", metric, **kw)


def get_act_patch_resid_post(p: Patching, metric, **kw) -> torch.Tensor:
    """Patch the residual stream at the end of each block. `[step, layer, pos]`."""
    return get_act_patch(p, "blocks.*.hook_resid_post", metric, **kw)


def get_act_patch_attn_out(p: Patching, metric, **kw) -> torch.Tensor:
    """Patch each attention layer's output. `[step, layer, pos]`."""
    return get_act_patch(p, "blocks.*.hook_attn_out", metric, **kw)


def get_act_patch_mlp_out(p: Patching, metric, **kw) -> torch.Tensor:
    """Patch each MLP (MoE) layer's output. `[step, layer, pos]`."""
    return get_act_patch(p, "blocks.*.hook_mlp_out", metric, **kw)


def get_act_patch_attn_head_out_by_pos(p: Patching, metric, **kw) -> torch.Tensor:
    """Patch each head's output (`attn.hook_z`) per position. `[step, layer, pos, head]`."""
    return get_act_patch(p, "blocks.*.attn.hook_z", metric, by="head", **kw)


def get_act_patch_self_cond(p: Patching, metric, *, by_pos: bool = True, name: str = "self_cond.hook_logits_in",
                            **kw) -> torch.Tensor:
    """Patch the self-conditioning channel at each step (whole canvas or per position).

    `name`: `self_cond.hook_logits_in` (the previous step's processed logits) or
    `self_cond.hook_signal` (what the channel adds to the embeddings). `[step, pos]` (by_pos) or
    `[step]`; NaN at a canvas's first step (no channel there).
    """
    _require_diffusion(p, "self-conditioning")
    out = get_act_patch(p, name, metric, by="pos" if by_pos else "layer", **kw)
    return out[:, 0]


def get_act_patch_canvas(p: Patching, metric, *, by_pos: bool = True, **kw) -> torch.Tensor:
    """Patch the input canvas tokens at each step (whole or per position) via their embeddings.

    `[step, pos]` (by_pos) or `[step]`.
    """
    _require_diffusion(p, "canvas")
    out = get_act_patch(p, "hook_embed", metric, by="pos" if by_pos else "layer", **kw)
    return out[:, 0]


def _require_diffusion(p: Patching, what: str) -> None:
    if p.kind != "diffusion":
        raise PatchingError(f"{what} patching needs a DiffusionGemma model; the AR twin has no such channel")


__all__ = [
    "Site", "Patching", "PatchingError", "NoiseTable", "patch_run", "layer_sites", "LogitDiff", "AnswerProb", "ExactMatch",
    "normalise", "metric_values", "run_outputs", "select_outputs", "get_act_patch", "get_act_patch_resid_pre",
    "get_act_patch_resid_post", "get_act_patch_attn_out", "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_by_pos", "get_act_patch_self_cond", "get_act_patch_canvas",
]
