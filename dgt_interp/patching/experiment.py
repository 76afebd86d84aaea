"""The patching experiment: a clean and a corrupted run that replay the same sampler noise.

`Patching(model, clean_ids, corrupted_ids, seed=...)` runs both prompts once (with `capture`,
`record=("logits",)`), keeps the clean activations patches need, and re-runs the corrupted prompt
with sites patched: many patched copies at once along the batch axis (`iter_runs`,
`run_patches`, `patched_tokens`), each copy continuing to denoise with the real HF `generate`.

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
from dgt_interp.patching.interventions import NextUlp
from dgt_interp.patching.metrics import metric_values
from dgt_interp.patching.sites import PatchingError, Site, indices
from dgt_interp.sampling import ReplayedNoise


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
            self.noise = ReplayedNoise(seed)
        else:
            cfg, _ = model._prepare_generation_config(None, **generation_kwargs)
            if cfg.do_sample:
                raise PatchingError("AR patching needs greedy decoding (sampling noise is not replayed); "
                                    "pass do_sample=False")
            self.noise = None
        self._acts: dict[tuple[str, int], torch.Tensor] = {}
        self._stashed: set[str] = set()
        self._names: dict[str, list[str]] = {}  # pattern -> resolved names (resolution is not free)
        self._layouts: dict[str, str | None] = {}
        self.clean = self._reference("clean", names)
        self.corrupted = self._reference("corrupted", ())
        self.n_steps = min(self.clean.n_steps, self.corrupted.n_steps)

    # -- runs -----------------------------------------------------------------------------------
    def capture(self, which: str, *, copies: int = 1, fwd_hooks=(), record=("logits",)):
        """Run the `which` ("clean" | "corrupted") prompts, `copies` times along the batch axis, with the
        experiment's replayed noise and `fwd_hooks` (TL-style, `fn(t, hook, step)`); a `Trajectory`."""
        ids, mask = self.ids[which], self.masks[which]
        kwargs = dict(self.generation_kwargs)
        if mask is not None:
            kwargs["attention_mask"] = mask.repeat(copies, 1)
        return capture(self.model, ids.repeat(copies, 1), names=(), seed=self.seed, record=record,
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
        traj = self.capture(which, fwd_hooks=self._stash_hooks(names))
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
            self.capture("clean", fwd_hooks=self._stash_hooks(missing), record=())
            self._stashed |= set(missing)
        return resolved

    def clean_activation(self, name: str, step: int) -> torch.Tensor | None:
        """The clean run's `name` at `step` as the hook saw it (`[batch, pos, ...]`), None if it did not fire."""
        self.need([name])
        return self._acts.get((name, step))

    def clean_metric(self, metric, *, per_prompt: bool = False) -> float | torch.Tensor:
        """The metric on the clean run, averaged over the prompt batch (`per_prompt=True`: `[batch]`)."""
        values = metric_values(self.clean, metric)
        return values if per_prompt else float(values.mean())

    def corrupted_metric(self, metric, *, per_prompt: bool = False) -> float | torch.Tensor:
        """The metric on the (unpatched) corrupted run, averaged over the prompt batch (`per_prompt=True`: `[batch]`)."""
        values = metric_values(self.corrupted, metric)
        return values if per_prompt else float(values.mean())

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
            self.need([name])
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

    def run(self, sites: Site | Sequence[Site] = (), *, record=("logits",)):
        """One corrupted run with `sites` applied (by default patched from the clean run); its Trajectory."""
        sites = [sites] if isinstance(sites, Site) else list(sites)
        return self.capture("corrupted", fwd_hooks=self._patch_hooks([sites]), record=record)

    def iter_runs(self, patches: Sequence[Site | Sequence[Site]], *, batch_size: int = 64, progress: bool = False,
                  desc: str = "patched runs") -> Iterator[tuple[int, int, object]]:
        """Run many patched copies of the corrupted prompts, `batch_size` per `generate` along the batch axis.

        Yields `(start, n, traj)` per chunk: `traj` (a `Trajectory` with logits) holds copies
        `patches[start:start + n]`, copy i in rows `i * batch .. (i + 1) * batch - 1`. Every site is
        validated before the first run; nothing but the chunk's run is held.
        """
        patches = [[p] if isinstance(p, Site) else list(p) for p in patches]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PatchingError(f"batch_size must be an int >= 1, got {batch_size!r}")
        for sites in patches:  # validate everything before the first run
            for site in sites:
                self._resolve(site)
        bar = tqdm(total=len(patches), desc=desc, unit="patch") if progress else None
        try:
            for start in range(0, len(patches), batch_size):
                chunk = patches[start:start + batch_size]
                traj = self.capture("corrupted", copies=len(chunk), fwd_hooks=self._patch_hooks(chunk))
                if bar is not None:
                    bar.update(len(chunk))
                yield start, len(chunk), traj
        finally:
            if bar is not None:
                bar.close()

    def iter_patches(self, patches: Sequence[Site | Sequence[Site]], metric, *, batch_size: int = 64,
                     progress: bool = False, per_prompt: bool = False,
                     desc: str = "patched runs") -> Iterator[tuple[int, torch.Tensor]]:
        """Metric of many patched runs, streamed: yields `(start, values)` per chunk, `values[i]`
        (averaged over the prompt batch; `per_prompt=True`: `[batch]` per patch, prompt order) belonging to
        `patches[start + i]` (see `iter_runs`; `desc` labels the progress bar, which counts patched runs)."""
        for start, n, traj in self.iter_runs(patches, batch_size=batch_size, progress=progress, desc=desc):
            values = metric_values(traj, metric).view(n, self.batch)
            yield start, values if per_prompt else values.mean(-1)

    def run_patches(self, patches, metric, *, batch_size: int = 64, progress: bool = False,
                    per_prompt: bool = False) -> torch.Tensor:
        """`[n_patches]` metric values (`per_prompt=True`: `[n_patches, batch]`; see `iter_patches`);
        batch_size=1 = one generate per patch."""
        out = torch.full((len(patches), self.batch) if per_prompt else (len(patches),), float("nan"))
        for start, values in self.iter_patches(patches, metric, batch_size=batch_size, progress=progress,
                                               per_prompt=per_prompt):
            out[start:start + len(values)] = values
        return out

    def patched_tokens(self, patches: Sequence[Site | Sequence[Site]], *, batch_size: int = 64,
                       progress: bool = False) -> torch.Tensor:
        """`[n_patches, batch, pos]` the emitted tokens of each patched run (see `iter_runs`)."""
        out = []
        for _, n, traj in self.iter_runs(patches, batch_size=batch_size, progress=progress):
            out.append(traj.outputs()[1].view(n, self.batch, -1))
        return torch.cat(out) if out else torch.zeros(0, self.batch, 0, dtype=torch.long)

    def rounding_noise(self, metric, pattern: str = "blocks.*.hook_resid_pre", *, n: int = 256, seed: int = 0,
                       batch_size: int = 256) -> float:
        """How far float rounding alone moves the metric: the largest |effect| of `n` one-ulp nudges.

        Any patch perturbs every later float operation, so even a site whose true effect is 1e-30
        (an early step whose influence has decayed) moves the metric by a few ulps. Sweep cells
        with |patched - corrupted| at or below this are rounding, not effects, and their order is
        noise (compare rankings, e.g. attribution vs the exact sweep, above it). Each copy nudges one
        random (step, layer, position) site of `pattern` up by one ulp (`NextUlp`) in batched
        corrupted runs; returns max |metric - corrupted metric| (averaged over the prompt batch).
        """
        names = layer_names(self, pattern)
        self.need(names)
        sites = [Site(nm, s, q, intervention=NextUlp()) for nm in names for s in range(self.n_steps)
                 for q in range(self.positions(nm, s))]
        if not sites:
            raise PatchingError(f"{pattern!r} fires at none of the {self.n_steps} steps; pick another hook")
        if n < 1 or batch_size < 1:
            raise PatchingError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        pick = torch.randint(len(sites), (n,), generator=torch.Generator().manual_seed(seed)).tolist()
        values = self.run_patches([sites[i] for i in pick], metric, batch_size=batch_size)
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
