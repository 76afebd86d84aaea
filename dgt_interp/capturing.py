"""`capture`: run a model's own `generate` and record the (step × layer × position) grid it computed.

Use it as `dgt_interp.capture(...)` (the function); this module also holds the planning, budget and
error types (`dgt_interp.capturing.plan_capture`, `CaptureBudgetError`, ...).

Faithful by construction: we do not reimplement the sampler. `capture` calls the real
`generate` of a bridged twin of the model (`backends.tl.bridge_for`: same parameter tensors, TL hook
points in place) after `torch.manual_seed(seed)`, and records between HF's own pieces:

- DiffusionGemma: `_denoising_step` is wrapped (it sees the input canvas, the self-conditioning
  logits, the finished rows and HF's `cur_step`; it returns the argmax canvas), the sampler built by
  `_prepare_sampler` becomes a recording subclass of `EntropyBoundSampler` (its `accept_canvas` sees
  the sampled canvas, the processed logits and sets `accepted_token_mask`), and the decoder forward
  is wrapped for the raw logits;
- Gemma 4 AR twin: a no-op logits processor appended after HF's own sees each step's processed
  scores; a forward wrapper sees the raw logits.
Activations come from TransformerLens hooks on the twin (`backend="tl"`) or from nnsight's per-call
cache over the same hook-point modules (`backend="nnsight"`); both give identical tensors.

Memory is explicit: `estimate_bytes(...)` before running, `max_bytes=` refuses with a message that
says how to cut, `dtype=` downcasts floats, `storage="disk"` streams each recorded step to
`out_dir` (safetensors) instead of RAM.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import threading
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSampler

from dgt_interp.atomic import atomic_dir, save_tensors
from dgt_interp.backends.devices import check_device, execution_device
from dgt_interp.backends.tl import DIFFUSION_ARCH, architecture_of, bridge_for, pinned, sync_generation_config
from dgt_interp.backends.tl import hooks as tl_hooks
from dgt_interp.errors import DgtInterpError
from dgt_interp.names import HookNameError, level_for, name_info, resolve_names
from dgt_interp.sampling import ReplayedNoise, token_entropy
from dgt_interp.selection import select
from dgt_interp.trajectory import OPTIONAL_RECORDS, DiskActivations, Trajectory, model_fingerprint, step_file

BACKENDS = ("tl", "nnsight")


class CaptureBudgetError(DgtInterpError, MemoryError):
    """The capture would hold more than `max_bytes` (message names the estimate and how to cut it)."""


class CaptureError(DgtInterpError, ValueError):
    """Bad capture arguments (one-line message that says what to do)."""


class PromptTooLongError(CaptureError):
    """Prompt tokens + new tokens exceed the model's `max_position_embeddings` (one-line message)."""


def fmt_bytes(n: float) -> str:
    """`n` bytes for people: "1.5 GiB" (what budget refusals quote)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


# ---------------------------------------------------------------------------------------------
# planning: bounds, selections, memory estimate
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a capture will do, decided before running."""

    kind: str  # "diffusion" | "ar"
    names: list[str]
    level: str
    layouts: dict[str, str | None]
    record: list[str]
    steps: list[int]  # steps whose activations are recorded (subset of 0..max_steps-1)
    positions: list[int]
    max_steps: int
    canvas_length: int
    n_canvases: int
    batch: int
    dtype: torch.dtype | None
    bytes_per_name: dict[str, int]  # at one recorded step
    record_bytes: int  # canvases etc. over max_steps

    @property
    def activation_bytes(self) -> int:
        return sum(self.bytes_per_name.values()) * len(self.steps)

    @property
    def total_bytes(self) -> int:
        return self.activation_bytes + self.record_bytes

    def __str__(self) -> str:
        biggest = sorted(self.bytes_per_name.items(), key=lambda kv: -kv[1])[:3]
        top = ", ".join(f"{n} {fmt_bytes(b * len(self.steps))}" for n, b in biggest)
        return (f"~{fmt_bytes(self.total_bytes)} (activations {fmt_bytes(self.activation_bytes)} = {len(self.names) + len(self.record)} "
                f"names x {len(self.steps)} steps x {len(self.positions)} positions x batch {self.batch}"
                f"{'; largest: ' + top if top else ''}; per-step records {fmt_bytes(self.record_bytes)})")


# generate kwargs capture sets itself, or that would change what generate returns
_OWNED_KWARGS = ("return_dict_in_generate", "output_scores", "output_logits", "output_hidden_states",
                 "output_attentions", "input_ids", "inputs")
_PIXEL_KWARGS = ("pixel_values", "image_position_ids", "mm_token_type_ids")


@functools.lru_cache(maxsize=None)
def _allowed_kwargs(cls) -> frozenset:
    """Names `generate` takes besides its generation config: its own and the forward's parameters
    (per class; `inspect.signature` costs more than a tiny model's denoising step)."""
    return frozenset(inspect.signature(cls.generate).parameters) | frozenset(
        inspect.signature(cls.forward).parameters) | frozenset(_PIXEL_KWARGS)


def check_generation_kwargs(model, generation_kwargs: dict):
    """(HF's resolved generation config, the kwargs it left over) after one-line checks of every kwarg.

    HF's `generate` silently ignores what it does not know (a typo such as `t_mni=0.1`, or
    `entropy_bound=` meant for the sampler config); capture refuses it, naming the valid settings.
    """
    owned = [k for k in generation_kwargs if k in _OWNED_KWARGS]
    if owned:
        raise CaptureError(f"capture sets {owned[0]!r} itself (it needs generate's own outputs); drop it")
    kwargs = {k: v for k, v in generation_kwargs.items() if k != "attention_mask"}
    config, left = model._prepare_generation_config(kwargs.pop("generation_config", None), **kwargs)
    allowed = _allowed_kwargs(type(model))
    unknown = sorted(k for k in left if k not in allowed)
    if unknown:
        known = sorted(k for k in config.to_dict() if not k.startswith("_") and k not in _OWNED_KWARGS)
        hint = difflib.get_close_matches(unknown[0], known, n=1)
        extra = " (the entropy bound goes in sampler_config: dgt_interp.sampling.entropy_bound_kwargs(bound))" \
            if unknown[0] == "entropy_bound" else ""
        shown = ", ".join(known[:24]) + (f", … ({len(known) - 24} more: {type(config).__name__})" if len(known) > 24 else "")
        raise CaptureError(f"unknown generate setting {unknown[0]!r} for {type(model).__name__}"
                           + (f"; did you mean {hint[0]!r}?" if hint else "") + f"{extra}; valid settings: {shown}")
    return config, left


def _bounds(model, input_ids: torch.Tensor, generation_kwargs: dict) -> tuple[str, int, int, int]:
    """(kind, max_steps, canvas_length, n_canvases) from HF's own generation-config resolution."""
    config, _ = check_generation_kwargs(model, generation_kwargs)
    prompt_len = input_ids.shape[1]
    if architecture_of(model) == DIFFUSION_ARCH:
        _, max_new = model._prepare_generated_length(config, prompt_len)
    else:
        max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - prompt_len
    check_length(model, prompt_len, int(max_new))
    if architecture_of(model) == DIFFUSION_ARCH:
        canvas = model.config.canvas_length
        n_canvases = math.ceil(max_new / canvas)
        return "diffusion", config.max_denoising_steps * n_canvases, canvas, n_canvases
    return "ar", int(max_new), int(max_new), 1


def check_length(model, prompt_tokens: int, new_tokens: int) -> None:
    """One-line error if `prompt_tokens + new_tokens` exceed the model's `max_position_embeddings`
    (generate would run past the positions the model was built for without a word)."""
    limit = model.config.get_text_config().max_position_embeddings
    if prompt_tokens + new_tokens > limit:
        raise PromptTooLongError(
            f"prompt of {prompt_tokens} tokens + {new_tokens} new tokens = {prompt_tokens + new_tokens} positions is "
            f"more than this model allows (max_position_embeddings {limit}); shorten the prompt to at most "
            f"{max(limit - new_tokens, 0)} tokens or generate fewer (max_new_tokens=)")


def _check_inputs(model, input_ids) -> None:
    """One-line errors for ids `generate` would fail on deep inside."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64,
                                                                                                    torch.int32):
        got = f"a {input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) \
            else type(input_ids).__name__
        raise CaptureError(f"input_ids must be a 2-D int64 tensor [batch, pos], got {got}; build one with "
                           "dgt_interp.prompt_batch(prompts, tokenizer)")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise CaptureError(f"input_ids of shape {tuple(input_ids.shape)} is empty; pass at least one prompt token")
    vocab = model.config.get_text_config().vocab_size
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        raise CaptureError(f"token id {low if low < 0 else high} is outside the vocabulary (0..{vocab - 1}); "
                           "encode prompts with the model's own tokenizer")


def _check_mask(model, input_ids, attention_mask) -> None:
    """A left-padded batch without its attention mask would silently attend to the padding."""
    text = model.config.get_text_config()
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else text.pad_token_id
    if attention_mask is None:
        if pad is not None and input_ids.shape[0] > 1 and bool((input_ids[:, 0] == pad).any()):
            raise CaptureError("the batch is left-padded but no attention_mask was given (generate would attend to "
                               "the padding); pass attention_mask=batch['attention_mask'] from prompt_batch")
    elif not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise CaptureError(f"attention_mask must be a tensor of the ids' shape {tuple(input_ids.shape)}, got {shape}")


def plan_capture(model, input_ids, *, names=None, steps=None, positions=None, record=(), dtype=None,
                 fwd_hooks=(), **generation_kwargs) -> Plan:
    """Resolve names, bounds and selections and estimate the bytes a capture will hold (no run)."""
    architecture_of(model)
    with pinned(model):
        return _plan(model, input_ids, names, steps, positions, record, dtype, fwd_hooks, generation_kwargs)


def _plan(model, input_ids, names, steps, positions, record, dtype, fwd_hooks, generation_kwargs) -> Plan:
    _check_inputs(model, input_ids)
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise CaptureError(f"dtype={dtype!r}: activations are stored in a floating dtype; pass e.g. torch.bfloat16 "
                           "or torch.float16 (None keeps the model's)")
    kind, max_steps, canvas, n_canvases = _bounds(model, input_ids, generation_kwargs)
    if names is not None and not isinstance(names, str) and not (
            isinstance(names, (list, tuple, set)) and all(isinstance(n, str) for n in names)):
        raise HookNameError(f"names={names!r}: pass a hook name, a glob or a list of them, e.g. "
                            "'blocks.*.hook_resid_post'")
    resolved = resolve_names(model, names)
    record = [record] if isinstance(record, str) else list(record or ())
    for r in record:
        if r not in OPTIONAL_RECORDS:
            raise CaptureError(f"unknown record {r!r}; choose from {', '.join(OPTIONAL_RECORDS)} (hook names go in names=)")
    hook_names = [n for n, _ in fwd_hooks]
    level = level_for(model, resolved + resolve_names(model, hook_names) if hook_names else resolved)
    info = {n: name_info(model, n, level) for n in resolved}  # (shape at batch 2, layout)
    layouts = {n: layout for n, (_, layout) in info.items()}
    if kind == "ar":
        bad = [n for n in resolved if layouts[n] is None]
        if bad:
            raise HookNameError(f"{bad[0]!r} has no [batch, pos] axis on the AR twin, so it has no per-token step; "
                                "record it on the diffusion model or drop it")
    sel_steps = select(steps, max_steps, "step", f"at most {max_steps} steps with these settings", CaptureError)
    sel_pos = select(positions, canvas, "position", f"the canvas has {canvas} positions", CaptureError)
    batch = input_ids.shape[0]
    itemsize = (lambda d: torch.empty((), dtype=d).element_size())
    float_size = itemsize(dtype) if dtype is not None else itemsize(model.dtype)
    per_name = {}
    for n in resolved:
        shape, layout = info[n]
        numel = math.prod(shape)
        if layout == "bp":
            numel = numel // (shape[0] * shape[1]) * batch * len(sel_pos)
        elif layout == "flat":
            numel = numel // shape[0] * batch * len(sel_pos)
        per_name[n] = numel * float_size
    vocab = model.config.get_text_config().vocab_size
    logit_size = itemsize(dtype) if dtype is not None else 4
    for r in record:
        if r != "final_logits":
            per_name[r] = batch * len(sel_pos) * vocab * logit_size
    # input/sampled/argmax canvases (int64), accepted (bool), entropy (float32), active/has_self_cond (bool)
    record_bytes = max_steps * (batch * canvas * (3 * 8 + 1 + 4) + 2 * batch + 16)
    if "final_logits" in record:  # one [batch, canvas, vocab] per canvas, whatever the step count
        record_bytes += n_canvases * batch * canvas * vocab * logit_size
    record_bytes += batch * (input_ids.shape[1] + n_canvases * canvas) * 8  # sequences
    return Plan(kind, resolved, level, layouts, record, sel_steps, sel_pos, max_steps, canvas, n_canvases, batch,
                dtype, per_name, record_bytes)


def estimate_bytes(model, input_ids, **kwargs) -> int:
    """Upper bound on the bytes `capture(model, input_ids, **kwargs)` will hold (max steps assumed)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("seed", "backend", "max_bytes", "storage", "out_dir", "hook_steps",
                                                        "store_device")}
    return plan_capture(model, input_ids, **kwargs).total_bytes


# ---------------------------------------------------------------------------------------------
# recording
# ---------------------------------------------------------------------------------------------


class _Recorder:
    """Collects per-step records and activations; shared by both backends."""

    def __init__(self, plan: Plan, pad_id: int, disk_root: Path | None, store_device: torch.device | None = None):
        self.plan = plan
        self.store_device = store_device or torch.device("cpu")  # where recorded activations are kept
        self.pad_id = pad_id
        self.disk_root = disk_root
        self.step = 0  # the step whose decoder forward runs next
        self.canvas = -1
        self.record_set = set(plan.steps)
        all_pos = plan.positions == list(range(plan.canvas_length))
        self.pos_idx = None if all_pos else torch.tensor(plan.positions)
        self.rows: dict[str, list[torch.Tensor]] = {k: [] for k in
                                                    ("input_canvas", "sampled_canvas", "argmax_canvas", "accepted",
                                                     "entropy", "active", "has_self_cond", "cur_step", "canvas")}
        self.buf: dict[str, torch.Tensor] = {}
        self.acts: dict[str, dict[int, torch.Tensor]] = {n: {} for n in plan.names + plan.record
                                                         if n != "final_logits"}
        # record "final_logits": per canvas, each row's logits at its last active step so far
        self.final: list[torch.Tensor] | None = [] if "final_logits" in plan.record else None
        self.eos: torch.Tensor = torch.zeros(0, dtype=torch.long)
        self.finished_before = torch.zeros(plan.batch, dtype=torch.bool)  # EOS in an earlier canvas
        self.canvas_start = False
        self.specs: dict[str, dict] = {}
        self.ar_state: dict[str, torch.Tensor] = {}

    @property
    def recording(self) -> bool:
        return self.step in self.record_set

    # -- activations --------------------------------------------------------------------------
    def _to_store(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.plan.dtype if (self.plan.dtype is not None and t.is_floating_point()) else t.dtype
        return t.detach().to(self.store_device, dtype=dtype, copy=True)

    def store(self, name: str, t: torch.Tensor, step: int) -> None:
        """Record hook output `t` of `name` at `step` ([batch, pos, ...] after position selection)."""
        layout = self.plan.layouts.get(name, "bp")
        if self.plan.kind == "ar":
            self._store_ar(name, t, layout, step)
            return
        if step not in self.record_set:
            return
        b = self.plan.batch
        if layout == "flat":
            t = t.reshape(b, self.plan.canvas_length, *t.shape[1:])
        if layout is not None and self.pos_idx is not None:
            t = t[:, self.pos_idx.to(t.device)]
        self.buf[name] = self._to_store(t)

    def _store_ar(self, name: str, t: torch.Tensor, layout, step: int) -> None:
        """AR: write the newest position's value into column `step` of a running [batch, L, ...] state."""
        b = self.plan.batch
        col = t.reshape(b, -1, *t.shape[1:])[:, -1] if layout == "flat" else t[:, -1]
        state = self.ar_state.get(name)
        if state is None:
            state = torch.zeros((b, self.plan.canvas_length, *col.shape[1:]), dtype=col.dtype, device=col.device)
            self.ar_state[name] = state
        state[:, step] = col.detach()
        if step in self.record_set:
            sel = state if self.pos_idx is None else state[:, self.pos_idx.to(state.device)]
            self.buf[name] = self._to_store(sel)

    def flush(self, step: int) -> None:
        """End of a step: move this step's buffered activations to RAM or to its step file."""
        if step not in self.record_set:
            self.buf = {}
            return
        for name, t in self.buf.items():
            spec = self.specs.setdefault(name, {"shape": list(t.shape), "dtype": str(t.dtype)})
            if list(t.shape) != spec["shape"]:
                raise CaptureError(f"{name} changes shape between recorded steps ({spec['shape']} -> {list(t.shape)}: "
                                   "the encoder cache grows by a canvas); record it within one canvas with steps=")
        if self.disk_root is not None:
            save_tensors(step_file(self.disk_root, step), self.buf)
            for name in self.buf:
                self.acts[name][step] = None  # marker: on disk
        else:
            for name, t in self.buf.items():
                self.acts[name][step] = t
        self.buf = {}

    def store_logits(self, t: torch.Tensor, step: int) -> None:
        """The model's raw logits of this step (`[batch, pos, vocab]`): the "logits" record and/or the
        running "final_logits" (a row's slot is overwritten at each step it is active: after the run it
        holds the logits `Trajectory.outputs` selects, without keeping every step)."""
        if "logits" in self.acts:
            self.store("logits", t, step)
        if self.final is None:
            return
        if self.plan.kind == "ar":  # the newest position's logits into column `step`
            if not self.final:
                dtype = self.plan.dtype if self.plan.dtype is not None else t.dtype
                self.final.append(torch.zeros((self.plan.batch, self.plan.canvas_length, t.shape[-1]), dtype=dtype))
            self.final[0][:, step] = self._to_store(t[:, -1])
        elif self.canvas_start:
            self.final.append(self._to_store(t))
        else:
            active = self.rows["active"][-1]
            write = active & ~self.finished_before.to(active.device)  # = Trajectory.active after the run
            if bool(write.any()):
                self.final[-1][write.to(self.final[-1].device)] = self._to_store(t[write.to(t.device)])

    def hook(self, name: str):
        """A TL hook function that records `name` at the current step."""

        def fn(t, hook):
            self.store(name, t, self.step)

        return fn

    # -- diffusion per-step records -----------------------------------------------------------
    # Diffusion records stay on the model's device until `records()` (a copy, not a host transfer,
    # per step: one device sync at the end instead of five per step).
    def begin_diffusion_step(self, current_canvas, self_conditioning_logits, finished, cur_step: int, max_steps: int):
        self.canvas_start = cur_step == max_steps
        if self.canvas_start:
            self.canvas += 1
            if self.canvas > 0 and self.eos.numel():  # as _mark_finished_rows marks them after the run
                last = self.rows["argmax_canvas"][-1]  # on the model's device until records()
                self.finished_before = (self.finished_before.to(last.device)
                                        | torch.isin(last, self.eos.to(last.device)).any(-1))
        b = current_canvas.shape[0]
        self.rows["input_canvas"].append(current_canvas.detach().clone())
        self.rows["active"].append(~finished.detach())
        self.rows["has_self_cond"].append((self_conditioning_logits is not None,) * b)  # plain values: no
        self.rows["cur_step"].append(int(cur_step))                                    # tensor op per step
        self.rows["canvas"].append(self.canvas)

    def on_accept(self, denoiser_canvas, logits, accepted_mask, entropy):
        self.rows["sampled_canvas"].append(denoiser_canvas.detach().clone())
        self.rows["accepted"].append(accepted_mask.detach().clone())
        self.rows["entropy"].append(entropy.detach().float())
        if "processed_logits" in self.acts:
            self.store("processed_logits", logits, self.step)

    def end_diffusion_step(self, argmax_canvas):
        self.rows["argmax_canvas"].append(argmax_canvas.detach().clone())

    # -- AR per-step records ------------------------------------------------------------------
    def on_ar_scores(self, input_ids, scores, prompt_len: int):
        b, length = self.plan.batch, self.plan.canvas_length
        s = self.step
        canvas = torch.full((b, length), self.pad_id, dtype=torch.long)
        canvas[:, :s] = input_ids[:, prompt_len:prompt_len + s].cpu()
        self.rows["input_canvas"].append(canvas)
        arg = canvas.clone()
        arg[:, s] = scores.argmax(-1).cpu()
        self.rows["argmax_canvas"].append(arg)
        ent = self.rows["entropy"][-1].clone() if s else torch.zeros(b, length)
        with torch.no_grad():  # a record: under attribution's autograd it must keep no graph
            ent[:, s] = token_entropy(scores.float()).cpu()
        self.rows["entropy"].append(ent)
        acc = torch.zeros(b, length, dtype=torch.bool)
        acc[:, s] = True
        self.rows["accepted"].append(acc)
        self.rows["has_self_cond"].append(torch.zeros(b, dtype=torch.bool))
        self.rows["cur_step"].append(torch.tensor(length - s))
        self.rows["canvas"].append(torch.tensor(0))
        if "processed_logits" in self.acts:
            self.store("processed_logits", scores[:, None], s)

    def finish_ar(self, sequences, prompt_len: int, eos_ids: list[int]):
        """Fill sampled canvases and the active mask from the generated tokens."""
        gen = sequences[:, prompt_len:].cpu()
        for s, canvas in enumerate(self.rows["input_canvas"]):
            sampled = canvas.clone()
            sampled[:, s] = gen[:, s]
            self.rows["sampled_canvas"].append(sampled)
            done_before = torch.isin(gen[:, :s], torch.tensor(eos_ids)).any(-1) if s else torch.zeros(len(gen), dtype=torch.bool)
            self.rows["active"].append(~done_before)

    def records(self) -> dict[str, torch.Tensor]:
        """`[step, ...]` per record, on the CPU (rows of tensors stacked, rows of plain values tensorised)."""
        out = {k: (torch.stack(v).cpu() if isinstance(v[0], torch.Tensor) else torch.tensor(v)) if v else torch.zeros(0)
               for k, v in self.rows.items()}
        if self.final is not None:
            out["final_logits"] = torch.stack(self.final) if self.final else torch.zeros(0)
        return out


class _RecordingSampler(EntropyBoundSampler):
    """HF's `EntropyBoundSampler` that also reports what `accept_canvas` saw.

    `accept_canvas` is HF's entropy-bound acceptance with the entropy computed once
    (`sampling.token_entropy`, bit for bit HF's `Categorical(logits).entropy()`): the recorder keeps
    it, so a recorded step costs no second vocabulary-sized entropy pass (tested against HF's own
    method). With `noise` (a `sampling.ReplayedNoise`), the random draws come from the noise object
    instead of torch's global RNG: the initial canvas, the re-noising tokens, and the sample, which HF
    draws with `torch.multinomial` inside `_denoising_step` and `_ReplayedMultinomial` answers from
    the replayed noise (one draw per step, not HF's and then ours).
    """

    recorder: _Recorder
    noise: ReplayedNoise | None = None
    canvas: int = -1  # canvases started (replay only)
    max_steps: int = 0
    replay: "_ReplayedMultinomial | None" = None  # this step's, until HF hands over the sample

    def initialize_canvas(self, batch_size: int, device) -> torch.Tensor:
        if self.noise is None:
            return super().initialize_canvas(batch_size, device)
        self.canvas += 1
        return self.noise.initial_canvas(self.canvas).to(device).expand(batch_size, -1).clone()

    @torch.no_grad()  # discrete decisions: under attribution's autograd they must keep no graph
    def accept_canvas(self, current_canvas, denoiser_canvas, logits, cur_step):
        if self.replay is not None:  # HF has drawn this step's sample: the rest of the step runs without the mode
            self.replay.close()
            self.replay = None
        entropy = token_entropy(logits)  # [batch, canvas]; HF: Categorical(logits=logits).entropy()
        sorted_entropy, order = torch.sort(entropy, dim=-1, descending=False)
        # HF's bound: the k lowest-entropy tokens whose summed entropy minus their largest is <= the bound
        selected = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy <= self.entropy_bound
        self.accepted_token_mask = torch.scatter(torch.zeros_like(selected), -1, order, selected)
        self.recorder.on_accept(denoiser_canvas, logits, self.accepted_token_mask, entropy)
        return torch.where(self.accepted_token_mask, denoiser_canvas, current_canvas)

    def renoise_canvas(self, accepted_canvas, cur_step):
        if self.noise is None:
            return super().renoise_canvas(accepted_canvas, cur_step)
        fresh = self.noise.renoise(self.canvas, self.max_steps - int(cur_step)).to(accepted_canvas.device)
        return torch.where(~self.accepted_token_mask, fresh.expand_as(accepted_canvas), accepted_canvas)

    def replayed_sample(self, cur_step: int) -> "_ReplayedMultinomial | None":
        """The function mode that answers this step's `torch.multinomial` from the replayed noise (None: no replay)."""
        if self.noise is None:
            return None
        self.replay = _ReplayedMultinomial(self.noise, self.canvas, self.max_steps - int(cur_step))
        return self.replay


class _ReplayedMultinomial(TorchFunctionMode):
    """Answers HF's one-sample `torch.multinomial(probs [rows * canvas, vocab], 1)` with the replayed draw.

    `torch.multinomial` with one sample is `argmax(probs / exponential noise)`; here the noise is
    `ReplayedNoise.exponential(canvas, step)` `[canvas, vocab]`, the same for every row of the batch.
    Entered (`open`) when the decoder forward returns and left (`close`) when HF hands the sample to the
    sampler's `accept_canvas` (or at the step's end): a thread-local torch function mode that sees the
    few ops from the logits processor to the sample and nothing else.
    """

    def __init__(self, noise: ReplayedNoise, canvas: int, step: int):
        super().__init__()
        self.noise, self.canvas, self.step = noise, canvas, step
        self.entered = False

    def open(self) -> None:
        self.__enter__()
        self.entered = True

    def close(self) -> None:
        if self.entered:
            self.entered = False
            self.__exit__(None, None, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.multinomial:
            probs = args[0] if args else kwargs["input"]
            n = args[1] if len(args) > 1 else kwargs.get("num_samples")
            if n != 1 or probs.dim() != 2:
                raise CaptureError("the sampler drew other than one sample per position; replayed noise cannot "
                                   "answer it: run without noise= (report this: transformers changed its sampler)")
            exp = self.noise.exponential(self.canvas, self.step).to(probs.device)
            return (probs.view(-1, *exp.shape) / exp).argmax(-1).view(-1, 1)
        return func(*args, **kwargs)


class _ARRecordingProcessor(LogitsProcessor):
    """A no-op logits processor (appended after HF's own) that records each AR step."""

    def __init__(self, recorder: _Recorder, prompt_len: int):
        self.recorder, self.prompt_len = recorder, prompt_len

    def __call__(self, input_ids, scores):
        rec = self.recorder
        rec.on_ar_scores(input_ids, scores, self.prompt_len)
        rec.flush(rec.step)
        rec.step += 1
        return scores


def _instrument(twin, rec: _Recorder, plan: Plan, stack: ExitStack, want_raw_logits: bool,
                noise: ReplayedNoise | None = None) -> None:
    """Install the recording wrappers on the (private) twin for the duration of `stack`."""

    def restore(attr):
        stack.callback(lambda: twin.__dict__.pop(attr, None))

    orig_forward = type(twin).forward.__get__(twin)
    if plan.kind == "diffusion":
        orig_step = type(twin)._denoising_step.__get__(twin)
        orig_prepare = type(twin)._prepare_sampler.__get__(twin)

        def prepare_sampler(generation_config):
            sampler = orig_prepare(generation_config)
            recording = _RecordingSampler.__new__(_RecordingSampler)
            recording.__dict__.update(sampler.__dict__)
            recording.recorder = rec
            if noise is not None:
                recording.noise = noise.bind(sampler.vocab_size, sampler.canvas_length,
                                             generation_config.max_denoising_steps, execution_device(twin))
                recording.max_steps = generation_config.max_denoising_steps
            return recording

        def denoising_step(**kw):
            rec.begin_diffusion_step(kw["current_canvas"], kw["self_conditioning_logits"], kw["finished_denoising"],
                                     kw["cur_step"], twin._dgt_max_steps)
            replay = kw["sampler"].replayed_sample(kw["cur_step"])
            if want_raw_logits or replay is not None:
                forward = kw["decoder_forward"]

                def decoder_forward(**fkw):
                    out = forward(**fkw)
                    if want_raw_logits:
                        rec.store_logits(out.logits, rec.step)
                    if replay is not None:  # from here to the sample: HF's sampler ops only
                        replay.open()
                    return out

                kw["decoder_forward"] = decoder_forward
            try:
                out = orig_step(**kw)
            finally:
                if replay is not None:
                    replay.close()
            rec.end_diffusion_step(out[1])
            rec.flush(rec.step)
            rec.step += 1
            return out

        twin._denoising_step = denoising_step
        twin._prepare_sampler = prepare_sampler
        restore("_denoising_step")
        restore("_prepare_sampler")
    elif want_raw_logits:

        def forward(*args, **kwargs):
            out = orig_forward(*args, **kwargs)
            rec.store_logits(out.logits.float(), rec.step)
            return out

        twin.forward = forward
        restore("forward")


def _wrap_user_hook(fn, rec: _Recorder, hook_steps: set[int] | None):
    """Run a TL hook fn only at `hook_steps`; pass `step=` if the fn takes it."""
    takes_step = "step" in inspect.signature(fn).parameters

    def wrapped(t, hook):
        if hook_steps is not None and rec.step not in hook_steps:
            return None
        return fn(t, hook=hook, step=rec.step) if takes_step else fn(t, hook=hook)

    return wrapped


# ---------------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def capture(
    model,
    input_ids: torch.Tensor,
    *,
    names=None,
    steps=None,
    positions=None,
    seed: int | None = 0,
    record=(),
    dtype: torch.dtype | None = None,
    backend: str = "tl",
    fwd_hooks=(),
    hook_steps=None,
    max_bytes: int | None = None,
    storage: str = "memory",
    out_dir: str | Path | None = None,
    noise: ReplayedNoise | None = None,
    store_device: str | torch.device | None = "cpu",
    **generation_kwargs,
) -> Trajectory:
    """Run `model.generate(input_ids, **generation_kwargs)` after `torch.manual_seed(seed)` and record it.

    Args:
        model: `DiffusionGemmaForBlockDiffusion` or its AR twin `Gemma4ForCausalLM` (never modified:
            hooks live on a bridged twin that shares its weights).
        input_ids: `[batch, pos]` prompt ids (pass `attention_mask=` for left-padded batches).
        names: hook names or globs to record (`dgt_interp.list_names(model)`), e.g.
            `"blocks.*.hook_resid_post"`; stored as `[step, batch, pos, ...]`.
        steps: execution-order steps (ints, slice, list) whose activations/opt-in records are kept;
            None = all. Per-step canvases are always kept for every step.
        positions: canvas positions to keep for `[batch, pos]` activations; None = all.
        seed: seeds torch's global RNG right before `generate` (None: use the current RNG state).
        record: opt-in per-step tensors: "logits" (the model's output logits), "processed_logits"
            (after the temperature schedule: what the sampler and the next step's self-conditioning see);
            "final_logits": only the logits `traj.outputs()` returns, `[canvas, batch, pos, vocab]`
            (each row's last active step per canvas; memory independent of the step count).
        dtype: store floating activations in this dtype (e.g. `torch.bfloat16`).
        backend: "tl" (TransformerLens hooks) or "nnsight" (nnsight's per-call cache); same tensors.
        fwd_hooks: TL-style `[(name, fn)]` applied while generating, `fn(tensor, hook[, step])`
            returns a replacement or None; editing e.g. `self_cond.hook_logits_in` changes the run.
        hook_steps: steps at which `fwd_hooks` run (int / slice / list; None = all).
        max_bytes: refuse (CaptureBudgetError) if the estimate exceeds this many bytes of RAM.
        storage: "memory" or "disk" (stream each recorded step to `out_dir`; RAM holds one step).
        noise: a `dgt_interp.sampling.ReplayedNoise`: the sampler draws from it instead of torch's
            global RNG (the same draws for every row; DiffusionGemma only). What patching replays.
        store_device: where recorded activations (and opt-in logits) are kept: "cpu" (default: GPU
            memory holds only the model's run), another device such as "cuda:0", or None = the
            model's execution device (nothing leaves the accelerator; `max_bytes` then bounds GPU
            memory). Per-step canvases always live on CPU; storage="disk" needs "cpu".
        **generation_kwargs: passed to `generate` unchanged (max_denoising_steps, t_min, t_max,
            sampler_config, max_new_tokens, attention_mask, ...).

    Returns:
        A `Trajectory`; `traj.sequences` equals `generate(...).sequences` token for token (on CPU).
        `input_ids` / `attention_mask` on another device than the model are moved to its
        execution device (`backends.devices.execution_device`), as `generate` needs.

    Raises:
        TypeError: unsupported model class. HookNameError: unknown/out-of-range names (with
        suggestions). CaptureError: bad steps/positions/backend/storage. CaptureBudgetError: over
        `max_bytes`. Exceptions raised by user hooks propagate; all hooks are removed first.
    """
    if backend not in BACKENDS:
        raise CaptureError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if noise is not None and not isinstance(noise, ReplayedNoise):
        raise CaptureError(f"noise must be a dgt_interp.sampling.ReplayedNoise, got {type(noise).__name__}")
    if storage not in ("memory", "disk"):
        raise CaptureError(f"unknown storage {storage!r}; use 'memory' or 'disk' (with out_dir=)")
    if storage == "disk" and out_dir is None:
        raise CaptureError("storage='disk' needs out_dir=<directory> for the safetensors files")
    if storage == "disk" and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise CaptureError(f"out_dir {str(out_dir)!r} exists and is not a directory; pass a directory path")
    architecture_of(model)  # one-line error for an unsupported model before anything reads it
    store = None if store_device is None else check_device(store_device, CaptureError, "store_device=")
    input_ids, generation_kwargs = _to_model_device(model, input_ids, generation_kwargs)
    if store is None:
        store = execution_device(model)
    if storage == "disk" and store.type != "cpu":
        raise CaptureError(f"storage='disk' streams activations through CPU to out_dir; drop store_device={store_device!r} "
                           "(or use storage='memory')")
    with pinned(model):  # one fingerprint of the model for the whole capture (dozens of twin/name lookups)
        fwd_hooks = list(fwd_hooks or ())
        plan = plan_capture(model, input_ids, names=names, steps=steps, positions=positions, record=record,
                            dtype=dtype, fwd_hooks=fwd_hooks, **generation_kwargs)
        _check_mask(model, input_ids, generation_kwargs.get("attention_mask"))
        if noise is not None and plan.kind != "diffusion":
            raise CaptureError("noise= replays DiffusionGemma's sampler; the AR twin draws no sampler noise when it "
                               "decodes greedily (do_sample=False): drop noise=")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
            raise CaptureError(f"max_bytes={max_bytes!r} must be a non-negative int (bytes of RAM)")
        if storage == "memory":
            held, what = plan.total_bytes, str(plan)
        else:
            held = plan.record_bytes + sum(plan.bytes_per_name.values())
            what = (f"~{fmt_bytes(held)} in RAM with storage='disk' (per-step records {fmt_bytes(plan.record_bytes)} + one step "
                    f"of activations {fmt_bytes(sum(plan.bytes_per_name.values()))})")
        if max_bytes is not None and held > max_bytes:
            raise CaptureBudgetError(
                f"capture would hold {what} > max_bytes={fmt_bytes(max_bytes)}; cut it with fewer names, "
                "steps=..., positions=..., dtype=torch.bfloat16, or storage='disk', out_dir=..."
            )
        hook_step_set = None if hook_steps is None else set(select(hook_steps, plan.max_steps, "hook step",
                                                                    f"at most {plan.max_steps} steps", CaptureError))
        user_hooks = [(n, fn) for pat, fn in fwd_hooks for n in resolve_names(model, [pat])]

        with _exclusive(model):
            if storage == "disk":
                with atomic_dir(out_dir) as tmp:  # a failed capture leaves an older save at out_dir intact
                    traj = _run(model, input_ids, plan, seed, backend, generation_kwargs, user_hooks, hook_step_set,
                                noise, disk_root=tmp, store_device=store)
                traj.root = traj.activations.root = Path(out_dir)
            else:
                traj = _run(model, input_ids, plan, seed, backend, generation_kwargs, user_hooks, hook_step_set, noise,
                            store_device=store)
        if steps is not None and not traj.recorded_steps and plan.steps:
            raise CaptureError(f"steps={steps!r} selects none of the {traj.n_steps} steps the run took (it stopped early); "
                               f"select steps below {traj.n_steps}")
        return traj


_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextmanager
def _exclusive(model):
    """One capture at a time per model: a bridged twin and its hooks cannot serve two runs at once."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(model, threading.Lock())
    if not lock.acquire(blocking=False):
        raise CaptureError("another capture (or patching run) is using this model in another thread; a model "
                           "serves one run at a time: wait for it, or load a second copy for this thread")
    try:
        yield
    finally:
        lock.release()


def _to_model_device(model, input_ids, generation_kwargs):
    """`input_ids` and `attention_mask` moved to the model's execution device (where `generate` needs them)."""
    device = execution_device(model)
    if isinstance(input_ids, torch.Tensor) and input_ids.device != device:
        input_ids = input_ids.to(device)
    mask = generation_kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.device != device:
        generation_kwargs = {**generation_kwargs, "attention_mask": mask.to(device)}
    return input_ids, generation_kwargs


def _run(model, input_ids, plan, seed, backend, generation_kwargs, user_hooks, hook_step_set, noise,
         disk_root: Path | None = None, store_device: torch.device | None = None) -> Trajectory:
    """Generate on the bridged twin with the recorders installed; the Trajectory of that run."""
    bridged = bridge_for(model, plan.level, backend)
    twin = bridged.twin
    sync_generation_config(model, twin)
    text = model.config.get_text_config()
    pad_id = model.generation_config.pad_token_id
    pad_id = pad_id if pad_id is not None else (text.pad_token_id or 0)
    rec = _Recorder(plan, pad_id, disk_root, store_device)
    eos = model.generation_config.eos_token_id
    rec.eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=torch.long)
    gen_kwargs = dict(generation_kwargs)
    prompt_len = input_ids.shape[1]
    if plan.kind == "diffusion":
        twin._dgt_max_steps = plan.max_steps // plan.n_canvases  # max_denoising_steps (see `_bounds`)
    else:
        processors = LogitsProcessorList(list(gen_kwargs.pop("logits_processor", None) or []))
        processors.append(_ARRecordingProcessor(rec, prompt_len))
        gen_kwargs["logits_processor"] = processors

    def run(input_ids):
        if seed is not None:
            torch.manual_seed(seed)
        out = twin.generate(input_ids=input_ids, **gen_kwargs)
        return out.sequences if plan.kind == "diffusion" else out

    hooks = [(n, _wrap_user_hook(fn, rec, hook_step_set)) for n, fn in user_hooks]
    with ExitStack() as stack:
        _instrument(twin, rec, plan, stack, bool({"logits", "final_logits"} & set(plan.record)), noise)
        if backend == "tl":
            hooks += [(n, rec.hook(n)) for n in plan.names]
            stack.enter_context(tl_hooks(bridged, hooks))
            sequences = run(input_ids)
        else:
            if hooks:
                stack.enter_context(tl_hooks(bridged, hooks))
            from dgt_interp.backends.nnsight import run_with_nnsight  # nnsight is heavy: only when asked for

            sequences = run_with_nnsight(bridged, run, input_ids, plan.names, rec)

    if plan.kind == "ar":
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        rec.finish_ar(sequences, prompt_len, eos)
    records = rec.records()
    if plan.kind == "diffusion":
        _mark_finished_rows(records, sequences.cpu(), model, prompt_len)
    return _build(plan, rec, records, sequences.cpu(), model, backend, seed, generation_kwargs, disk_root, prompt_len,
                  rec.store_device)


def _mark_finished_rows(records, sequences, model, prompt_len) -> None:
    """Rows that hit EOS in an earlier canvas still run the decoder but are padded: mark them inactive."""
    eos = model.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []))
    if records["canvas"].numel() == 0 or eos.numel() == 0:
        return
    last_of = {}
    for s, c in enumerate(records["canvas"].tolist()):
        last_of[c] = s
    finished = torch.zeros(sequences.shape[0], dtype=torch.bool)
    finished_before = {}
    for c in sorted(last_of):
        finished_before[c] = finished.clone()
        finished |= torch.isin(records["argmax_canvas"][last_of[c]], eos).any(-1)
    for s, c in enumerate(records["canvas"].tolist()):
        records["active"][s] &= ~finished_before[c]


def _build(plan, rec, records, sequences, model, backend, seed, generation_kwargs, disk_root, prompt_len,
           store_device=None) -> Trajectory:
    n_steps = records["cur_step"].shape[0]
    recorded = [s for s in plan.steps if s < n_steps]
    fired = {n: [s in rec.acts[n] for s in recorded] for n in rec.acts}
    settings = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v))
                for k, v in generation_kwargs.items() if k != "attention_mask"}
    meta = {
        "kind": plan.kind, "prompt_length": prompt_len, "canvas_length": plan.canvas_length,
        "recorded_steps": recorded, "positions": plan.positions, "names": plan.names, "record": plan.record,
        "dtype": str(plan.dtype) if plan.dtype is not None else None, "backend": backend, "seed": seed,
        "generation_kwargs": settings, "model_class": type(model).__name__,
        "model_fingerprint": model_fingerprint(model),
    }
    names = [n for n in rec.acts if any(fired[n]) or n in rec.specs]
    if disk_root is not None:
        specs = {n: rec.specs[n] for n in names if n in rec.specs}
        fired = {n: fired[n] for n in specs}
        traj = Trajectory(meta=meta, sequences=sequences, records=records,
                          activations=DiskActivations(disk_root, recorded, specs, fired), fired=fired,
                          model=model, root=disk_root)
        digests = traj.write_records(disk_root)  # the step files are there already; meta.json last
        traj.activations.digests = {k.split("/", 1)[1]: v for k, v in digests.items() if k.startswith("steps/")}
        return traj
    acts = {}
    for n in plan.names + plan.record:
        if n not in rec.specs:
            continue
        spec = rec.specs[n]
        zeros = None
        rows = []
        for s in recorded:
            t = rec.acts[n].get(s)
            if t is None:
                if zeros is None:
                    zeros = torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"].split(".")[-1]),
                                        device=store_device)
                t = zeros
            rows.append(t)
        acts[n] = torch.stack(rows) if rows else torch.zeros(0)
    fired = {n: fired[n] for n in acts}
    return Trajectory(meta=meta, sequences=sequences, records=records, activations=acts, fired=fired, model=model)


__all__ = ["capture", "estimate_bytes", "plan_capture", "fmt_bytes", "check_generation_kwargs", "check_length", "Plan",
           "CaptureBudgetError", "CaptureError", "PromptTooLongError", "BACKENDS"]
