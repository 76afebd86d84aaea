"""Re-run one recorded DiffusionGemma denoising step, with TransformerLens hooks: `run_step`.

A denoising step is one decoder forward. It reads (HF `generate` / `_denoising_step`):
  current canvas          `[B, L]`     the recorded `input_canvas[step]`
  self-conditioning       `[B, L, V]`  the previous step's processed logits (cast to the embedding
                                       dtype); None at a canvas's first step; a row the adaptive stop
                                       had finished keeps the logits of its last active step
  encoder cache           per layer    keys/values of the prompt and every earlier canvas
  positions and masks                  `arange(prompt + canvas * L, ... + L)`, the prompt's padding

`run_step` rebuilds each input the way `generate` built it and calls the same decoder forward on the
bridged twin, so with no hooks its logits and activations equal the recorded step bit for bit
(tested on the zoo and a random-init model, TL and nnsight backends). Where each input comes from:
  - the encoder cache: recomputed by HF's own encoder calls (prefill on the prompt, then one call per
    earlier canvas, on the emitted tokens in `traj.sequences`), exactly as `generate` made it;
  - the self-conditioning logits, the first of: `self_cond.hook_logits_in` recorded at the step (all
    positions); `processed_logits` recorded at the previous step; raw `logits` recorded there (HF's
    logits processor applied again); else the previous step re-run by `run_step` itself (back to
    the canvas's first step, which has none). Downcast records (`capture(dtype=)`) are not used.
  - the prompt's attention mask: its leading padding (what `prompt_batch` makes), or `attention_mask=`.

Returns a `StepRun`: `logits` `[B, L, V]` (raw decoder logits, what `record=("logits",)` stores),
`processed_logits` (after the temperature schedule: what the sampler saw) and `cache` (a TL
`ActivationCache` of the names asked for, all positions, `[B, L, ...]`).
"""

from __future__ import annotations

import inspect
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from dgt_interp.backends.tl import DIFFUSION_ARCH, architecture_of, bridge_for, sync_generation_config
from dgt_interp.backends.tl import hooks as tl_hooks
from dgt_interp.capturing import BACKENDS
from dgt_interp.errors import DgtInterpError
from dgt_interp.names import level_for, resolve_names
from dgt_interp.step_cache import StepCache

SELF_COND_NAME = "self_cond.hook_logits_in"
# the generate settings a step depends on: the temperature schedule (processed logits) and the adaptive stop
STEP_SETTINGS = ("t_min", "t_max", "max_denoising_steps", "stability_threshold", "confidence_threshold")


class ReplayError(DgtInterpError, ValueError):
    """A step cannot be re-run from what the trajectory recorded (one line naming what to record)."""


@dataclass
class StepRun:
    """One re-run denoising step: `logits` / `processed_logits` `[B, L, V]`, `cache` (TL `ActivationCache`,
    `[B, L, ...]` per name), the `step` and the `self_conditioning` source used."""

    step: int
    logits: torch.Tensor
    processed_logits: torch.Tensor
    cache: StepCache
    self_conditioning: str  # "none" | "recorded hook_logits_in" | "recorded processed_logits" | ...


def _prompt_mask(ids: torch.Tensor, pad_id) -> torch.Tensor:
    """`[B, T]` bool: False on each row's leading padding (left padding, as `prompt_batch` makes it)."""
    if pad_id is None:
        return torch.ones_like(ids, dtype=torch.bool)
    return (ids != pad_id).long().cummax(dim=1).values.bool()


def _generation_config(model, traj):
    sync_generation_config(model, bridge_for(model, "blocks").twin)
    kwargs = {k: v for k, v in traj.meta.get("generation_kwargs", {}).items() if k in STEP_SETTINGS}
    config, _ = model._prepare_generation_config(None, **kwargs)
    return config


def _full_precision(traj, name: str) -> bool:
    """A record usable for bit-exact replay: recorded at every position, not downcast."""
    return traj.meta.get("dtype") is None and traj.meta.get("positions") == list(range(traj.meta["canvas_length"])) \
        and name in traj.activations


def _check(traj, model, step):
    if traj.kind != "diffusion":
        raise ReplayError("run_step re-runs DiffusionGemma denoising steps; this trajectory is of the AR twin "
                          "(re-run its forward on traj.sequences with the TL bridge instead)")
    if architecture_of(model) != DIFFUSION_ARCH:
        raise ReplayError(f"run_step needs the DiffusionGemma model the trajectory was captured with, got "
                          f"{type(model).__name__}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < traj.n_steps:
        raise ReplayError(f"step {step!r} is out of range: the trajectory has {traj.n_steps} steps "
                          f"(0..{traj.n_steps - 1})")
    for key in ("logits_processor", "self_conditioning_logits", "decoder_input_ids", "pixel_values", "generation_config"):
        if key in traj.meta.get("generation_kwargs", {}):
            raise ReplayError(f"this run passed {key}= to generate, which run_step cannot rebuild; re-capture without "
                              "it (generate settings as keywords, e.g. t_min=) to re-run its steps")


def _encoder_cache(twin, traj, canvas: int, attention_mask: torch.Tensor, config):
    """(cache, decoder attention mask `[B, T + L]`, decoder position ids `[1, L]`) for `canvas`, built with
    HF's own calls in `generate`'s order (prefill on the prompt, then one encoder call per earlier canvas)."""
    seq = traj.sequences.to(twin.device)
    prompt_len, length = traj.meta["prompt_length"], traj.meta["canvas_length"]
    batch = seq.shape[0]
    attention_mask = attention_mask.to(twin.device).bool()
    cache = twin._prepare_cache_for_generation(generation_config=config, batch_size=batch,
                                               max_length=prompt_len + length * (canvas + 1))
    cur_len = prompt_len
    encoder_position_ids = torch.arange(0, cur_len, dtype=torch.int32, device=seq.device).unsqueeze(0)
    decoder_position_ids = torch.arange(cur_len, cur_len + length, dtype=torch.int32, device=seq.device).unsqueeze(0)
    decoder_attention_mask = torch.nn.functional.pad(attention_mask, (0, length), value=True)
    for c in range(canvas + 1):
        input_ids = seq[:, :prompt_len + c * length]
        ids, enc_mask = twin._prepare_encoder_inputs(input_ids=input_ids, attention_mask=attention_mask,
                                                     encoder_position_ids=encoder_position_ids, cache=cache,
                                                     is_prefill=c == 0, canvas_length=length, batch_size=batch)
        cache = twin.model.encoder(input_ids=ids, attention_mask=enc_mask, cache=cache,
                                   position_ids=encoder_position_ids).cache
        if c < canvas:
            cur_len, decoder_attention_mask, attention_mask, encoder_position_ids, decoder_position_ids = (
                twin._prepare_kwargs_for_next_canvas(attention_mask=attention_mask,
                                                     decoder_attention_mask=decoder_attention_mask,
                                                     decoder_position_ids=decoder_position_ids,
                                                     canvas_length=length, cur_len=cur_len))
    return cache, decoder_attention_mask, decoder_position_ids


_RECORDED = object()  # `Replayer.run`'s default: the self-conditioning input the trajectory recorded or implies


def _wrap(fn, step: int):
    takes_step = "step" in inspect.signature(fn).parameters
    return (lambda t, hook: fn(t, hook=hook, step=step)) if takes_step else fn


class _OneStep:
    """The recorder protocol of `backends.nnsight.run_with_nnsight` for one decoder pass."""

    def __init__(self, has_self_cond: bool, batch: int):
        self.has_self_cond, self.batch, self.out = has_self_cond, batch, {}

    def records(self):
        return {"cur_step": torch.zeros(1), "has_self_cond": torch.full((1, self.batch), self.has_self_cond)}

    def store(self, name, t, step):
        self.out[name] = t.detach().clone()

    def flush(self, step):
        pass


class Replayer:
    """Re-runs steps of one DiffusionGemma trajectory (what `run_step` uses; attribution's per-step backward
    pass drives it directly). Memoises the encoder cache of the latest canvas and re-run processed logits.

    `Replayer(traj, model, attention_mask=None, backend="tl").run(step, names, fwd_hooks)` -> `StepRun`;
    `self_conditioning=` replaces the step's self-conditioning input, `grad=True` keeps the graph.
    """

    def __init__(self, traj, model, attention_mask=None, backend: str = "tl"):
        self.traj, self.model, self.backend = traj, model, backend
        self.config = _generation_config(model, traj)
        pad = model.generation_config.pad_token_id
        pad = pad if pad is not None else model.config.get_text_config().pad_token_id
        prompt = traj.sequences[:, :traj.meta["prompt_length"]]
        if attention_mask is None:
            attention_mask = _prompt_mask(prompt, pad)
        elif not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != prompt.shape:
            raise ReplayError(f"attention_mask must be the prompt's mask of shape {tuple(prompt.shape)}")
        self.attention_mask = attention_mask
        self.processor = model._prepare_logits_processor(self.config)
        self.encoded = {}
        self.processed = {}

    @property
    def self_conditioning_dtype(self) -> torch.dtype:
        """The dtype `generate` casts processed logits to before the next step reads them (the embeddings')."""
        return bridge_for(self.model, "blocks").twin.model.decoder.embed_tokens.weight.dtype

    def _processed(self, raw, step):
        cur = torch.tensor(int(self.traj.records["cur_step"][step]), dtype=torch.int32, device=raw.device)
        return self.processor(self.traj.sequences, raw, cur_step=cur)

    def processed_at(self, step: int) -> tuple[torch.Tensor, str]:
        """Processed logits `[B, L, V]` of `step`, from its records or re-run."""
        traj = self.traj
        if step in self.processed:
            return self.processed[step], "re-run"
        if step in traj.recorded_steps and _full_precision(traj, "processed_logits") \
                and traj.fired("processed_logits")[traj.step_index(step)]:
            return traj["processed_logits"][traj.step_index(step)], "recorded processed_logits"
        if step in traj.recorded_steps and _full_precision(traj, "logits") and traj.fired("logits")[traj.step_index(step)]:
            return self._processed(traj["logits"][traj.step_index(step)], step), "recorded logits"
        run = self.run(step, names=[], fwd_hooks=())
        self.processed[step] = run.processed_logits
        return run.processed_logits, "re-run"

    def self_conditioning(self, step: int, dtype) -> tuple[torch.Tensor | None, str]:
        traj = self.traj
        if not bool(traj.records["has_self_cond"][step].any()):
            return None, "none"
        if step in traj.recorded_steps and _full_precision(traj, SELF_COND_NAME) \
                and traj.fired(SELF_COND_NAME)[traj.step_index(step)]:
            return traj[SELF_COND_NAME][traj.step_index(step)].to(dtype), f"recorded {SELF_COND_NAME}"
        first = traj.canvas_steps(int(traj.records["canvas"][step]))[0]
        if step == first:
            raise ReplayError(f"step {step} read self-conditioning logits passed to generate; re-capture with "
                              f"names=[{SELF_COND_NAME!r}] to re-run it")
        active = traj.records["active"][first:step].bool()  # [k, B], steps first..step-1
        stopping = self.config.stability_threshold is not None and self.config.confidence_threshold is not None
        if stopping and not bool(active[0].all()):
            # a row finished in an earlier canvas: its adaptive-stop state was not recorded
            raise ReplayError(f"step {step}: a row finished in an earlier canvas and its self-conditioning input was not "
                              f"recorded; capture with names=[{SELF_COND_NAME!r}] to re-run this step")
        # row b reads the processed logits of its last active step before `step` (adaptive stop)
        last = [first + max(k for k in range(active.shape[0]) if bool(active[k, b])) if stopping else step - 1
                for b in range(active.shape[1])]
        parts, how = {}, set()
        for s in sorted(set(last)):
            parts[s], src = self.processed_at(s)
            how.add(src)
        rows = [parts[s][b] for b, s in enumerate(last)]
        return torch.stack(rows).to(dtype), " + ".join(sorted(how))

    def run(self, step: int, names, fwd_hooks, *, self_conditioning=_RECORDED, grad: bool = False) -> StepRun:
        """Step `step`; `self_conditioning`: the `[B, L, V]` input to use instead of the recorded one (None:
        none); `grad`: build the autograd graph (attribution's per-step backward pass)."""
        traj, model = self.traj, self.model
        names = resolve_names(model, names) if names else []
        user = [(n, _wrap(fn, step)) for pat, fn in fwd_hooks for n in resolve_names(model, [pat])]
        level = level_for(model, names + [n for n, _ in user])
        bridged = bridge_for(model, level, self.backend)  # nnsight wraps a twin of its own (backends.tl)
        twin = bridged.twin
        sync_generation_config(model, twin)
        canvas = int(traj.records["canvas"][step])
        if canvas not in self.encoded:
            self.encoded = {canvas: _encoder_cache(twin, traj, canvas, self.attention_mask, self.config)}
        cache, decoder_attention_mask, position_ids = self.encoded[canvas]
        current = traj.records["input_canvas"][step].to(twin.device)
        if self_conditioning is _RECORDED:
            sc, how = self.self_conditioning(step, self.self_conditioning_dtype)
        else:
            sc, how = self_conditioning, "given"
        mask_mapping = twin.model.decoder.create_diffusion_decoder_attention_mask(
            config=twin.config, inputs_embeds=current.unsqueeze(-1), cache=cache,
            decoder_attention_mask=decoder_attention_mask)
        kwargs = dict(decoder_input_ids=current, self_conditioning_logits=None if sc is None else sc.to(twin.device),
                      decoder_attention_mask=mask_mapping, cache=cache, decoder_position_ids=position_ids)
        store = {}

        def forward(_ids=None):
            return twin(**kwargs).logits

        with ExitStack() as stack, torch.set_grad_enabled(grad):
            if self.backend == "tl":
                hooks = user + [(n, (lambda n: lambda t, hook: store.__setitem__(n, t.detach().clone()))(n))
                                for n in names]
                if hooks:
                    stack.enter_context(tl_hooks(bridged, hooks))
                logits = forward()
            else:
                if user:
                    stack.enter_context(tl_hooks(bridged, user))
                from dgt_interp.backends.nnsight import run_with_nnsight  # heavy: only when asked for

                rec = _OneStep(sc is not None, current.shape[0])
                out = {}
                run_with_nnsight(bridged, lambda ids: out.setdefault("logits", forward(ids)), current, names, rec)
                logits, store = out["logits"], rec.out
        act_cache = StepCache({n: store[n] for n in names if n in store}, bridge_for(model, "full").bridge, model,
                              step=step)
        return StepRun(step, logits, self._processed(logits, step), act_cache, how)


def run_step(traj, model, step: int, *, fwd_hooks=(), names=None, backend: str = "tl",
             attention_mask: torch.Tensor | None = None) -> StepRun:
    """Re-run denoising step `step` of `traj` on `model` from its recorded inputs (see the module doc).

    Args:
        fwd_hooks: TL-style `[(name or glob, fn)]`, `fn(tensor, hook[, step])` returns a replacement
            or None; they apply to this step only (earlier steps re-run for self-conditioning run
            without them).
        names: hook names or globs to return in `StepRun.cache` (all positions); None = none.
        backend: "tl" or "nnsight" (the same tensors).
        attention_mask: the prompt's `[B, T]` mask if it is not its leading padding.
    """
    if backend not in BACKENDS:
        raise ReplayError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    _check(traj, model, step)
    if isinstance(names, str):
        names = [names]
    return Replayer(traj, model, attention_mask, backend).run(step, list(names or ()), list(fwd_hooks or ()))


__all__ = ["run_step", "Replayer", "StepRun", "ReplayError"]
