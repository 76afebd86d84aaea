"""The patching experiment: a clean and a corrupted run that replay the same sampler noise.

`Patching(model, clean_ids, corrupted_ids, seed=...)` runs both prompts once (with `capture`,
`record=("final_logits",)`: the output logits only), keeps the clean activations patches need (at the
steps they patch), and re-runs the corrupted prompt with sites patched: many patched copies at once
along the batch axis (`iter_runs`, `run_patches`, `patched_tokens`), each copy continuing to denoise
with the real HF `generate`.

Memory. A patched run keeps only what its metric reads (the final output logits, or the logits up to
the metric's step; nothing but tokens for `patched_tokens`), so it does not grow with the step count,
and the copies of one `generate` are chunked to a budget (`max_bytes`, default a fraction of the free
RAM; `budget.plan_patching` decides before running and refuses with a one-line error when not even
one copy fits). An explicit `batch_size` caps the chunk.

Randomness. A patched run must differ from the corrupted run only because of the patch. All runs
(clean, corrupted, patched) pass one `sampling.ReplayedNoise(seed)` to `capture`: the same draws for
every row, so K patched copies along the batch give the same numbers as K one-patch runs (tested),
and early-stopped rows cannot shift the stream of other rows. For canvas 0 these are the draws HF's
own batch-1 `generate` makes after `torch.manual_seed(seed)`, so the clean and corrupted runs equal
plain `capture(model, ids, seed=seed)` (tested). The AR twin must decode greedily (no noise at all).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from dgt_interp.backends.tl import DIFFUSION_ARCH, architecture_of
from dgt_interp.capturing import capture
from dgt_interp.names import name_info, natural_key, resolve_names
from dgt_interp.patching.budget import check_max_bytes, metric_record, plan_patching
from dgt_interp.patching.interventions import NextUlp
from dgt_interp.patching.metrics import metric_values
from dgt_interp.patching.sites import PatchingError, Site, indices
from dgt_interp.sampling import ReplayedNoise
from dgt_interp.tokenizer import load_tokenizer, position_labels, to_str_tokens


class Patching:
    """A clean and a corrupted run of `model` that replay the same sampler noise, and what patches need.

    Args:
        model: `DiffusionGemmaForBlockDiffusion` or the AR twin `Gemma4ForCausalLM` (greedy decoding).
        clean_ids, corrupted_ids: `[batch, pos]` prompts of the same shape (left-padded batches: pass
            `attention_mask=` (clean) and `corrupted_attention_mask=`).
        seed: the sampler noise table's seed (the runs equal `capture(..., seed=seed)` for canvas 0).
        names: hook names / globs whose clean activations to keep up front at every step (more are
            fetched on demand, at the steps patches need, by re-running the clean run).
        record: what the clean and corrupted runs keep (`capture`'s `record=`): the output logits
            ("final_logits", the default: what metrics read) or every step's ("logits").
        max_bytes: memory budget of one chunk of patched copies (and of each reference run); None =
            `budget.MEMORY_FRACTION` of the memory available (the GPU's for a CUDA model) when planned (`budget.plan_patching`).
        **generation_kwargs: passed to every `generate` (max_denoising_steps, sampler_config, ...).

    Attributes: `clean`, `corrupted` (Trajectory, with `record`), `n_steps` (steps both runs reached:
    the step axis of every sweep), `kind` ("diffusion" | "ar"), `last_plan` (the latest `PatchPlan`).
    """

    def __init__(self, model, clean_ids: torch.Tensor, corrupted_ids: torch.Tensor, *, seed: int = 0,
                 attention_mask: torch.Tensor | None = None, corrupted_attention_mask: torch.Tensor | None = None,
                 names=(), record=("final_logits",), max_bytes: int | None = None, **generation_kwargs):
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
            self.noise = ReplayedNoise(seed)
        else:
            cfg, _ = model._prepare_generation_config(None, **generation_kwargs)
            if cfg.do_sample:
                raise PatchingError("AR patching needs greedy decoding (sampling noise is not replayed); "
                                    "pass do_sample=False")
            self.noise = None
        self._acts: dict[tuple[str, int], torch.Tensor] = {}
        self._stashed: dict[str, set[int] | None] = {}  # name -> clean steps held (None: every step)
        self._names: dict[str, list[str]] = {}  # pattern -> resolved names (resolution is not free)
        self._layouts: dict[str, str | None] = {}
        self._references: dict[tuple[str, int], object] = {}  # (which, metric step) -> run keeping those logits
        self.record = metric_record(None, record)[0]
        self.max_bytes = None if max_bytes is None else check_max_bytes(max_bytes)
        self.last_plan = plan_patching(self, 1, record=self.record, max_bytes=self.max_bytes, what="reference run")
        self.clean = self._reference("clean", names)
        self.corrupted = self._reference("corrupted", ())
        self.n_steps = min(self.clean.n_steps, self.corrupted.n_steps)

    # -- runs -----------------------------------------------------------------------------------
    def capture(self, which: str, *, copies: int = 1, fwd_hooks=(), record=("final_logits",), steps=None):
        """Run the `which` ("clean" | "corrupted") prompts, `copies` times along the batch axis, with the
        experiment's replayed noise and `fwd_hooks` (TL-style, `fn(t, hook, step)`); a `Trajectory`
        keeping `record` (at `steps` for per-step records)."""
        ids, mask = self.ids[which], self.masks[which]
        kwargs = dict(self.generation_kwargs)
        if mask is not None:
            kwargs["attention_mask"] = mask.repeat(copies, 1)
        return capture(self.model, ids.repeat(copies, 1), names=(), seed=self.seed, record=record, steps=steps,
                       fwd_hooks=list(fwd_hooks), noise=self.noise, **kwargs)

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
        traj = self.capture(which, fwd_hooks=self._stash_hooks({n: None for n in names}), record=self.record)
        self._stashed.update({n: None for n in names})
        return traj

    def _stash_hooks(self, wanted: dict[str, set[int] | None]):
        """Hooks that keep the clean activation of each name at its wanted steps (None: every step)."""
        def stash(name, steps):
            def fn(t, hook, step):
                if steps is None or step in steps:
                    self._acts[(name, step)] = t.detach().clone()

            return fn

        return [(n, stash(n, steps)) for n, steps in wanted.items()]

    def need(self, names, steps=None) -> list[str]:
        """Make sure the clean activations of `names` (globs) are held at `steps` (ints; None = every step),
        re-running the clean run once for whatever is missing; returns the resolved names."""
        resolved = self.resolve(names)
        steps = None if steps is None else {int(s) for s in ([steps] if isinstance(steps, int) else steps)}
        missing: dict[str, set[int] | None] = {}
        for n in resolved:
            held = self._stashed.get(n, set())
            if held is None:
                continue
            if steps is None:
                missing[n] = None
            elif not steps <= held:
                missing[n] = steps - held
        if missing:
            self.capture("clean", fwd_hooks=self._stash_hooks(missing), record=())
            for n, got in missing.items():
                self._stashed[n] = None if got is None else self._stashed.get(n, set()) | got
        return resolved

    def clean_activation(self, name: str, step: int) -> torch.Tensor | None:
        """The clean run's `name` at `step` as the hook saw it (`[batch, pos, ...]`), None if it did not fire."""
        self.need([name], [step])
        return self._acts.get((name, step))

    def reference(self, which: str, metric=None):
        """The clean or corrupted run (`which`) holding the logits `metric` reads: the stored run for a
        metric read at the end; for one read after step s, a re-run (same noise: the same run) that keeps
        the logits of steps 0..s, cached."""
        step = getattr(metric, "step", None)
        traj = self.clean if which == "clean" else self.corrupted
        if step is None or "logits" in self.record:
            return traj
        if (which, step) not in self._references:
            record, steps = metric_record(metric)
            self._references[(which, step)] = self.capture(which, record=record, steps=steps)
        return self._references[(which, step)]

    def clean_metric(self, metric, *, per_prompt: bool = False) -> float | torch.Tensor:
        """The metric on the clean run, averaged over the prompt batch (`per_prompt=True`: `[batch]`)."""
        values = metric_values(self.reference("clean", metric), metric)
        return values if per_prompt else float(values.mean())

    def corrupted_metric(self, metric, *, per_prompt: bool = False) -> float | torch.Tensor:
        """The metric on the (unpatched) corrupted run, averaged over the prompt batch (`per_prompt=True`: `[batch]`)."""
        values = metric_values(self.reference("corrupted", metric), metric)
        return values if per_prompt else float(values.mean())

    def position_labels(self, *, which: str = "clean", batch: int = 0, tokenizer=None) -> list[str]:
        """Labels of a sweep's position axis, in `Trajectory.to_str_tokens`' names, from the `which` run's row
        `batch` (tokenizer: the model's own by default).

        DiffusionGemma: the axis is the canvas, labelled with that run's emitted tokens, `c{j}:'tok'` (the
        first canvas: what a sweep's positions index). AR twin: the axis is the positions of the step's
        forward pass; at step 0 the prompt, `p{i}:'tok'` (padding included, as the hooks see it); at a later
        step its one position is the token generated the step before."""
        if which not in ("clean", "corrupted"):
            raise PatchingError(f"which={which!r}: use 'clean' or 'corrupted'")
        if not isinstance(batch, int) or not 0 <= batch < self.batch:
            raise PatchingError(f"batch={batch!r} is out of range: the experiment has {self.batch} prompts")
        traj = self.clean if which == "clean" else self.corrupted
        tok = tokenizer if tokenizer is not None else load_tokenizer(self.model)
        if self.kind == "diffusion":
            n = traj.records["argmax_canvas"].shape[-1]  # the canvas length
            return position_labels(traj.canvas_str_tokens(None, batch, tok)[:n], "c")
        return position_labels(to_str_tokens(tok, self.ids[which][batch]), "p")

    def position_counts(self, names: list[str]) -> dict[tuple[str, int], int]:
        """`{(name, step): positions}` where each hook fires in the clean run, from one clean run that keeps
        shapes only (or the activations already held): what to sample sites from without holding every step."""
        counts: dict[tuple[str, int], int] = {}
        todo = [n for n in names if self._stashed.get(n, set()) is not None]
        for (name, step), t in self._acts.items():
            if name in names and name not in todo:
                counts[(name, step)] = self._rows_pos(name, t)[1]
        if todo:
            def count(name):
                def fn(t, hook, step):
                    counts[(name, step)] = self._rows_pos(name, t)[1]

                return fn

            self.capture("clean", fwd_hooks=[(n, count(n)) for n in todo], record=())
        return counts

    def positions(self, name: str, step: int) -> int:
        """How many positions hook `name` has at `step` (0 if it did not fire)."""
        t = self.clean_activation(name, step)
        return 0 if t is None else self._rows_pos(name, t)[1]

    def _rows_pos(self, name: str, t: torch.Tensor) -> tuple[int, int]:
        if self.layout(name) == "flat":
            rows = self.batch
            return rows, t.shape[0] // rows
        return t.shape[0], t.shape[1]

    # -- patched runs ---------------------------------------------------------------------------
    def _resolve(self, site: Site) -> list[tuple[str, int, list[int], list[int] | None]]:
        """Site -> [(name, step, positions, heads)] checked against the clean activations."""
        names = self.resolve([site.name])
        steps = indices(site.step, self.n_steps, "step", f"both runs reached {self.n_steps} steps")
        out = []
        for name in names:
            self.need([name], steps)
            for s in steps:
                t = self._acts.get((name, s))
                if t is None:
                    if isinstance(site.step, int):
                        raise PatchingError(f"{name} does not fire at step {s} (self-conditioning is absent at a "
                                            "canvas's first step); pick another step")
                    continue
                n_pos = self._rows_pos(name, t)[1]
                pos = indices(site.pos, n_pos, "position", f"{name} has {n_pos} positions at step {s}")
                heads = None
                if site.head is not None:
                    if self.layout(name) == "flat" or t.dim() < 4:
                        raise PatchingError(f"{name} has no head axis ([batch, pos, head, d_head]); patch heads "
                                            "at blocks.{l}.attn.hook_z")
                    heads = indices(site.head, t.shape[2], "head", f"{name} has {t.shape[2]} heads")
                out.append((name, s, pos, heads))
        return out

    def layout(self, name: str) -> str | None:
        """How hook `name` lays out rows and positions: "bp" `[batch, pos, ...]`, "flat" `[batch * pos, ...]`
        (MoE router/experts) or None (other, e.g. the encoder cache)."""
        if name not in self._layouts:
            self._layouts[name] = name_info(self.model, name, "full")[1]
        return self._layouts[name]

    def _patch_hooks(self, copies: list[list[Site]]):
        """One TL hook per hook name that applies each copy's sites (copy k = rows k*B .. k*B+B-1):
        the selected slice becomes `site.intervention(current slice, clean slice)`."""
        plan: dict[str, dict[int, list]] = {}
        for k, sites in enumerate(copies):
            for site in sites:
                for name, s, pos, heads in self._resolve(site):
                    plan.setdefault(name, {}).setdefault(s, []).append((k, pos, heads, site.intervention))
        b = self.batch

        def hook_for(name):
            flat = self.layout(name) == "flat"

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
                for k, pos, heads, intervention in todo:
                    p = torch.tensor(pos, device=out.device)
                    at = (p,) if heads is None else (p[:, None], torch.tensor(heads, device=out.device))
                    rows = slice(k * b, (k + 1) * b)
                    view[(rows, *at)] = intervention(view[(rows, *at)], src[(slice(None), *at)]).to(out.dtype)
                return out

            return fn

        return [(name, hook_for(name)) for name in plan]

    def run(self, sites: Site | Sequence[Site] = (), *, record=("logits",), max_bytes: int | None = None):
        """One corrupted run with `sites` applied (by default patched from the clean run); its Trajectory,
        keeping `record` (default every step's logits: pass `record=("final_logits",)` to keep the outputs
        only). Refused before running when it would not fit `max_bytes` (see `budget.plan_patching`)."""
        sites = [sites] if isinstance(sites, Site) else list(sites)
        hooked = self._need_sites([sites])
        self.last_plan = plan_patching(self, 1, record=record, hooked=hooked, batch_size=1,
                                       max_bytes=self.max_bytes if max_bytes is None else max_bytes)
        return self.capture("corrupted", fwd_hooks=self._patch_hooks([sites]), record=record)

    def _need_sites(self, patches: list[list[Site]]) -> list[str]:
        """Stash the clean activations every site reads with one clean re-run; the hook names patched."""
        wanted: dict[str, set[int] | None] = {}
        for sites in patches:
            for site in sites:
                steps = None if site.step is None else set(indices(site.step, self.n_steps, "step",
                                                                   f"both runs reached {self.n_steps} steps"))
                for name in self.resolve([site.name]):
                    have = wanted.get(name, set())
                    wanted[name] = None if steps is None or have is None else have | steps
        for name, steps in wanted.items():
            if steps is not None:
                self.need([name], sorted(steps))
        every = [n for n, steps in wanted.items() if steps is None]
        if every:
            self.need(every)
        return list(wanted)

    def iter_runs(self, patches: Sequence[Site | Sequence[Site]], *, metric=None, record=None,
                  batch_size: int | None = 64, max_bytes: int | None = None, progress: bool = False,
                  desc: str = "patched runs") -> Iterator[tuple[int, int, object]]:
        """Run many patched copies of the corrupted prompts, chunked along the batch axis to a memory budget.

        Yields `(start, n, traj)` per chunk: `traj` holds copies `patches[start:start + n]`, copy i in
        rows `i * batch .. (i + 1) * batch - 1`, and keeps what `metric` reads (`budget.metric_record`:
        the final output logits, or the logits up to the metric's step), or `record` if given (default
        without a metric: "final_logits"). Chunks: `budget.plan_patching` (`max_bytes`, None = the
        experiment's budget or a fraction of the free RAM; at most `batch_size` copies; the plan is
        `self.last_plan`). Every site is validated before the first run; nothing but the chunk's run is held.
        """
        patches = [[p] if isinstance(p, Site) else list(p) for p in patches]
        if record is None and metric is None:
            record = ("final_logits",)
        hooked = self._need_sites(patches)
        for sites in patches:  # validate everything before the first run
            for site in sites:
                self._resolve(site)
        plan = plan_patching(self, len(patches), metric=metric, record=record, hooked=hooked,
                             max_bytes=self.max_bytes if max_bytes is None else max_bytes, batch_size=batch_size)
        self.last_plan = plan
        rec, steps = metric_record(metric, record)
        bar = tqdm(total=len(patches), desc=desc, unit="patch") if progress else None
        try:
            for start in range(0, len(patches), plan.copies):
                chunk = patches[start:start + plan.copies]
                traj = self.capture("corrupted", copies=len(chunk), fwd_hooks=self._patch_hooks(chunk), record=rec,
                                    steps=steps)
                if bar is not None:
                    bar.update(len(chunk))
                yield start, len(chunk), traj
        finally:
            if bar is not None:
                bar.close()

    def iter_patches(self, patches: Sequence[Site | Sequence[Site]], metric, *, batch_size: int | None = 64,
                     max_bytes: int | None = None, progress: bool = False, per_prompt: bool = False,
                     desc: str = "patched runs") -> Iterator[tuple[int, torch.Tensor]]:
        """Metric of many patched runs, streamed: yields `(start, values)` per chunk, `values[i]`
        (averaged over the prompt batch; `per_prompt=True`: `[batch]` per patch, prompt order) belonging to
        `patches[start + i]` (see `iter_runs`; `desc` labels the progress bar, which counts patched runs)."""
        for start, n, traj in self.iter_runs(patches, metric=metric, batch_size=batch_size, max_bytes=max_bytes,
                                             progress=progress, desc=desc):
            values = metric_values(traj, metric).view(n, self.batch)
            yield start, values if per_prompt else values.mean(-1)

    def run_patches(self, patches, metric, *, batch_size: int | None = 64, max_bytes: int | None = None,
                    progress: bool = False, per_prompt: bool = False) -> torch.Tensor:
        """`[n_patches]` metric values (`per_prompt=True`: `[n_patches, batch]`; see `iter_patches`);
        batch_size=1 = one generate per patch."""
        out = torch.full((len(patches), self.batch) if per_prompt else (len(patches),), float("nan"))
        for start, values in self.iter_patches(patches, metric, batch_size=batch_size, max_bytes=max_bytes,
                                               progress=progress, per_prompt=per_prompt):
            out[start:start + len(values)] = values
        return out

    def patched_tokens(self, patches: Sequence[Site | Sequence[Site]], *, batch_size: int | None = 64,
                       max_bytes: int | None = None, progress: bool = False) -> torch.Tensor:
        """`[n_patches, batch, pos]` the emitted tokens of each patched run (see `iter_runs`; no logits kept)."""
        out = []
        for _, n, traj in self.iter_runs(patches, record=(), batch_size=batch_size, max_bytes=max_bytes,
                                         progress=progress):
            out.append(traj.output_tokens().view(n, self.batch, -1))
        return torch.cat(out) if out else torch.zeros(0, self.batch, 0, dtype=torch.long)

    def rounding_noise(self, metric, pattern: str = "blocks.*.hook_resid_pre", *, n: int = 256, seed: int = 0,
                       batch_size: int | None = 256, max_bytes: int | None = None) -> float:
        """How far float rounding alone moves the metric: the largest |effect| of `n` one-ulp nudges.

        Any patch perturbs every later float operation, so even a site whose true effect is 1e-30
        (an early step whose influence has decayed) moves the metric by a few ulps. Sweep cells
        with |patched - corrupted| at or below this are rounding, not effects, and their order is
        noise (compare rankings, e.g. attribution vs the exact sweep, above it). Each copy nudges one
        random (step, layer, position) site of `pattern` up by one ulp (`NextUlp`) in batched
        corrupted runs; returns max |metric - corrupted metric| (averaged over the prompt batch).
        """
        names = layer_names(self, pattern)
        counts = self.position_counts(names)  # the nudged steps' activations are fetched after the draw
        sites = [Site(nm, s, q, intervention=NextUlp()) for nm in names for s in range(self.n_steps)
                 for q in range(counts.get((nm, s), 0))]
        if not sites:
            raise PatchingError(f"{pattern!r} fires at none of the {self.n_steps} steps; pick another hook")
        if n < 1 or (batch_size is not None and batch_size < 1):
            raise PatchingError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        pick = torch.randint(len(sites), (n,), generator=torch.Generator().manual_seed(seed)).tolist()
        values = self.run_patches([sites[i] for i in pick], metric, batch_size=batch_size, max_bytes=max_bytes)
        return float((values - self.corrupted_metric(metric)).abs().max())


def patch_run(model, clean_ids, corrupted_ids, sites, *, seed: int = 0, **kwargs):
    """One-shot: the corrupted run with `sites` patched from the clean run (Trajectory, with logits)."""
    return Patching(model, clean_ids, corrupted_ids, seed=seed, **kwargs).run(sites)


def layer_names(p: Patching, pattern: str) -> list[str]:
    """The concrete hook names `pattern` (a glob) matches, in natural (layer) order; one-line error if none."""
    names = sorted(p.resolve([pattern]), key=natural_key)
    if not names:
        raise PatchingError(f"no hook name matches {pattern!r}; print(dgt_interp.describe_names(model)) lists them")
    return names


__all__ = ["Patching", "patch_run", "layer_names"]
