"""`Trajectory`: what one recorded generation computed, over (step × layer × batch × position).

Layout (S = steps executed, R = steps with activations recorded, B = batch, L = canvas length,
P = recorded positions, V = vocabulary):

  sequences                       [B, T]     the generated output (= `model.generate(...).sequences`)
  per step, every step (records):
    input_canvas                  [S, B, L]  the canvas the decoder read
    sampled_canvas                [S, B, L]  tokens sampled from the processed logits
    argmax_canvas                 [S, B, L]  argmax canvas after the step (what `generate` emits at the end)
    accepted                      [S, B, L]  positions the sampler accepted (the rest were re-noised)
    entropy                       [S, B, L]  entropy of the processed logits (what the sampler sorts by)
    active                        [S, B]     row still denoising (finished rows keep their values)
    has_self_cond                 [S, B]     the decoder got self-conditioning logits (False at a canvas's first step)
    cur_step                      [S]        HF's counter: max_denoising_steps .. 1 within each canvas
    canvas                        [S]        which canvas (block) the step belongs to, from 0
  at recorded steps only (`recorded_steps`, length R):
    traj[name]                    [R, B, P, ...]       a hook name, e.g. "blocks.0.hook_resid_post"
    traj.stack("blocks.*.hook_resid_post")  [R, layer, B, P, d]
    traj["logits"], traj["processed_logits"]  [R, B, P, V]  (opt-in via `record=`)
  per canvas (opt-in via `record=("final_logits",)`, C = canvases; AR: C = 1):
    final_logits                  [C, B, L, V]  each row's logits at its last active step of the canvas:
                                              all `outputs()` needs, in memory independent of S
    traj.fired(name)              [R] bool   steps where the hook fired (others hold zeros)
  traj.cache(step)                a TransformerLens `ActivationCache` of one recorded step
  traj.run_with_cache(step)       that step re-run from its recorded inputs, with TL hooks (`replay.run_step`)

Several canvases are flattened into one global step axis (execution order from 0); `canvas` and
`cur_step` say where each step belongs. Positions are canvas positions (0..L-1) of the canvas being
denoised at that step.

AR twin (`kind == "ar"`): step s = the forward pass that produces generated token s; the "canvas" is
the whole generated region (L = max_new_tokens): `input_canvas[s]` holds tokens 0..s-1 and pad after,
`sampled_canvas[s]`/`argmax_canvas[s]` add token s, `accepted[s]` is one-hot at s. Activations at step
s hold, at position p <= s, the residual of the position that predicts generated token p (computed at
step p and cached since) and zeros at p > s; `entropy[s, :, p]` likewise. So diffusion analyses run
unchanged.

Save/load: `traj.save(dir)` writes `meta.json`, `records.safetensors` and one
`steps/NNNNNN.safetensors` per recorded step into a temporary sibling that replaces `dir` whole (an
interrupted save leaves the old trajectory or the new one, never a mix); `meta.json` records each
file's sha256 and the captured model's fingerprint. `Trajectory.load(dir)` reads them back lazily,
equal tensor for tensor, and checks them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import json
import re
import shutil
import weakref
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from dgt_interp.atomic import atomic_dir, save_tensors, write_text
from dgt_interp.backends.devices import first_values
from dgt_interp.backends.tl import bridge_for, fingerprint
from dgt_interp.errors import DgtInterpError
from dgt_interp.names import natural_key
from dgt_interp.step_cache import StepCache
from dgt_interp.tokenizer import TokenizerError, load_tokenizer, position_labels, to_str_tokens

STEP_RECORDS = ("input_canvas", "sampled_canvas", "argmax_canvas", "accepted", "entropy", "active",
                "has_self_cond", "cur_step", "canvas")
OPTIONAL_RECORDS = ("logits", "processed_logits", "final_logits")
FORMAT_VERSION = 2  # 2: per-file sha256 digests and the model fingerprint in meta.json


class TrajectoryError(DgtInterpError, ValueError):
    """Bad access into a trajectory (one-line message that says what to do)."""


def step_file(root: Path, step: int) -> Path:
    return Path(root) / "steps" / f"{step:06d}.safetensors"


_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                torch.int32, torch.bool, torch.int8, torch.uint8)}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (what `meta.json` records per file, checked on read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_FINGERPRINT_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> _FingerprintLayout


class _FingerprintLayout:
    """What `model_fingerprint` can reuse while a model's tensors, settings and config are the same
    (`backends.tl.fingerprint`): the hash of its config JSON and its state-dict names (tensors held weakly)."""

    def __init__(self, model, key):
        self.key = key
        # the digest's start (class name, full config JSON) hashed once; each call continues a copy
        self.prefix = hashlib.sha256(type(model).__name__.encode() + model.config.to_json_string(use_diff=False).encode())
        entries = list(model.state_dict(keep_vars=True).items())  # meta (offloaded) ones are read from their offload
        self.names = [name.encode() for name, _ in entries]
        self.refs = [weakref.ref(t) for _, t in entries]
        self.shape_bytes: dict = {}  # torch.Size -> its text, as hashed

    def tensors(self) -> list[torch.Tensor] | None:
        out = [r() for r in self.refs]
        return None if any(t is None for t in out) else out


def model_fingerprint(model) -> str:
    """A cheap identity of a model's weights: its class, config and the first values of every tensor.

    Two random inits of the same shapes differ; the same weights loaded twice agree, also when one of
    them is dispatched or offloaded by accelerate (`device_map=`: its meta weights are read from the
    offload, a few values each). Saved in a trajectory's meta and checked when the trajectory is used
    with a model. The values and shapes are read again at every call (in-place edits show, `.data`
    ones too); the config JSON and the tensor names are reused while `backends.tl.fingerprint`
    (tensor identities, settings, config) is unchanged."""
    key = fingerprint(model)
    layout = _FINGERPRINT_CACHE.get(model)
    tensors = layout.tensors() if layout is not None and (layout.key is key or layout.key == key) else None
    if tensors is None:
        layout = _FINGERPRINT_CACHE[model] = _FingerprintLayout(model, key)
        tensors = layout.tensors()
    # the first 64 values of each distinct tensor as float64 bytes: one cast and one copy to the host
    # per (device, dtype) group instead of one per tensor (tied weights are read once)
    groups: dict = {}
    for t in {id(t): t for t in tensors if t.device.type != "meta"}.values():
        groups.setdefault((t.device, t.dtype), []).append(t)
    heads: dict[int, bytes | None] = {}
    for group in groups.values():
        with torch.no_grad():
            parts = [t.reshape(-1)[:64] for t in group]
            flat = torch.cat(parts).to("cpu", torch.float64).numpy().tobytes()
        at = 0
        for t, x in zip(group, parts):
            end = at + 8 * len(x)
            heads[id(t)] = flat[at:end]
            at = end
    shapes = layout.shape_bytes
    chunks = []
    for name, t in zip(layout.names, tensors):
        if t.device.type == "meta":  # offloaded: read from accelerate's weights map (None: a bare meta model)
            head = first_values(model, name.decode(), t, 64)
            if head is None:
                continue
            heads[id(t)] = head.to(torch.float64).numpy().tobytes()
        shape = t.shape
        if shape not in shapes:
            shapes[shape] = str(tuple(shape)).encode()
        chunks += (name, shapes[shape], heads[id(t)])
    h = layout.prefix.copy()
    h.update(b"".join(chunks))
    return h.hexdigest()[:32]


class DiskActivations(Mapping):
    """name -> `[R, B, P, ...]`, read from per-step safetensors files on access (nothing held in RAM).

    Each step file is checked against its recorded sha256 the first time it is read."""

    def __init__(self, root: Path, steps: list[int], specs: dict[str, dict], fired: dict[str, list[bool]],
                 digests: dict[str, str] | None = None):
        self.root, self.steps, self.specs, self._fired = Path(root), steps, specs, fired
        self.digests = digests or {}
        self._verified: set[str] = set()

    def _open(self, step: int):
        path = step_file(self.root, step)
        key = path.name
        if key in self.digests and key not in self._verified:
            if not path.is_file() or file_digest(path) != self.digests[key]:
                raise TrajectoryError(f"{str(path)!r} is missing or corrupt (its sha256 differs from meta.json); "
                                      "re-save or re-capture the trajectory")
            self._verified.add(key)
        return safe_open(str(path), framework="pt")

    def __getitem__(self, name: str) -> torch.Tensor:
        spec = self.specs[name]
        shape, dtype = tuple(spec["shape"]), _DTYPES[spec["dtype"]]
        out = torch.zeros((len(self.steps), *shape), dtype=dtype)
        for i, s in enumerate(self.steps):
            if self._fired[name][i]:
                with self._open(s) as f:
                    out[i] = f.get_tensor(name)
        return out

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


def answer_mask(final: torch.Tensor, eos_id: int | None, include_eos: bool = True) -> torch.Tensor:
    """`[B, L]` bool: positions up to the first `eos_id` of `final` `[B, L]` (the EOS itself iff
    `include_eos`; all positions if `eos_id` is None or absent from the row)."""
    if eos_id is None:
        return torch.ones_like(final, dtype=torch.bool)
    is_eos = final == eos_id
    before = (is_eos.long().cumsum(-1) - is_eos.long()) == 0  # no EOS strictly before p
    if not include_eos:
        before &= ~is_eos
    has = is_eos.any(-1, keepdim=True)
    return torch.where(has, before, torch.ones_like(before))


def output_steps(kind: str, active: torch.Tensor, canvas: torch.Tensor, step: int | None) -> list[torch.Tensor]:
    """Which step's logits and argmax each row outputs: one `[batch]` tensor of global steps per canvas
    (step None: every canvas, in order) or one for the canvas of `step` (the state after `step`).

    DiffusionGemma: a row's output of a canvas is its last active step there (its first step if it
    was never active); AR: the last step (or `step`). `active` `[S, batch]`, `canvas` `[S]`; the
    index tensors live with `active` (e.g. on the GPU in attribution)."""
    dev = active.device
    if kind == "ar":
        s = len(canvas) - 1 if step is None else min(step, len(canvas) - 1)
        return [torch.full((active.shape[1],), s, dtype=torch.long, device=dev)]
    canvas = canvas.cpu()

    def last_active(steps: list[int]) -> torch.Tensor:
        idx = torch.tensor(steps, device=dev)
        pick = torch.where(active[idx], torch.arange(len(steps), device=dev)[:, None], -1).amax(0)
        return idx[pick.clamp(min=0)]

    if step is not None:
        c = int(canvas[min(step, len(canvas) - 1)])
        return [last_active([i for i in range(len(canvas)) if int(canvas[i]) == c and i <= step])]
    return [last_active([i for i in range(len(canvas)) if int(canvas[i]) == c]) for c in sorted(set(canvas.tolist()))]


def select_outputs(kind: str, logits: torch.Tensor, argmax: torch.Tensor, active: torch.Tensor, canvas: torch.Tensor,
                   step: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`Trajectory.outputs` on per-step tensors (e.g. logits that carry an autograd graph): logits
    `[S, batch, pos, vocab]`, argmax `[S, batch, pos]`, active `[S, batch]`, canvas `[S]`."""
    rows = torch.arange(active.shape[1], device=active.device)

    def take(t, s):  # t[s[b], b] for every row b, indexed on t's own device
        return t[s.to(t.device), rows.to(t.device)]

    picks = output_steps(kind, active, canvas, step)
    return torch.cat([take(logits, s) for s in picks], 1), torch.cat([take(argmax, s) for s in picks], 1)


class Trajectory:
    """One recorded generation. Build with `dgt_interp.capture(...)`; see the module docstring for the layout."""

    def __init__(self, *, meta: dict, sequences: torch.Tensor, records: dict[str, torch.Tensor],
                 activations: Mapping[str, torch.Tensor], fired: dict[str, list[bool]], model=None,
                 root: Path | None = None):
        self.meta = meta
        self.sequences = sequences
        self.records = records
        self.activations = activations
        self._fired = fired
        self.model = model  # the user's model (not saved); used by `cache(step)`
        self.root = root

    # ---- shape of the run -------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def n_steps(self) -> int:
        """S: decoder forward passes executed (diffusion: summed over canvases; AR: tokens generated)."""
        return int(self.records["cur_step"].shape[0])

    @property
    def recorded_steps(self) -> list[int]:
        """Execution-order indices of the steps whose activations were recorded (axis 0 of `traj[name]`)."""
        return list(self.meta["recorded_steps"])

    @property
    def positions(self) -> list[int]:
        """Canvas positions recorded in activations (axis 2 of `traj[name]` for `[batch, pos]` names)."""
        return list(self.meta["positions"])

    @property
    def names(self) -> list[str]:
        """Hook names and opt-in records held (keys for `traj[name]`)."""
        return list(self.activations)

    @property
    def tokenizer(self):
        """The attached model's tokenizer (`dgt_interp.tokenizer.load_tokenizer`), None without a model or one."""
        if self.model is None:
            return None
        try:
            return load_tokenizer(self.model)
        except TokenizerError:
            return None

    def __getattr__(self, item):
        records = self.__dict__.get("records", {})
        if item in records:
            return records[item]
        raise AttributeError(item)


    # ---- step / canvas semantics ------------------------------------------------------------
    @property
    def n_canvases(self) -> int:
        """Canvases (blocks) the run denoised (1 for the AR twin)."""
        return int(self.records["canvas"].max()) + 1 if self.n_steps else 0

    def canvas_steps(self, canvas: int = 0) -> list[int]:
        """Global (execution-order) steps of `canvas`, in order."""
        n_c = self.n_canvases
        if isinstance(canvas, bool) or not isinstance(canvas, int) or not 0 <= canvas < n_c:
            raise TrajectoryError(f"canvas {canvas!r} is out of range: the trajectory has {n_c} canvases (0..{n_c - 1})")
        return [s for s, c in enumerate(self.records["canvas"].tolist()) if c == canvas]

    def step_in_canvas(self) -> torch.Tensor:
        """`[S]` index of each execution step within its canvas's denoising run (0 at a canvas's first step)."""
        canvas = self.records["canvas"].long()
        out = torch.zeros_like(canvas)
        for s in range(1, canvas.numel()):
            out[s] = out[s - 1] + 1 if canvas[s] == canvas[s - 1] else 0
        return out

    def active_rows(self, canvas: int = 0) -> tuple[list[int], torch.Tensor]:
        """(global step of each canvas step k, `[K, B]` bool: row b was still denoising at canvas step k)."""
        steps = self.canvas_steps(canvas)
        return steps, self.records["active"][torch.tensor(steps, dtype=torch.long)].bool()

    def row_steps(self, canvas: int = 0) -> list[list[int]]:
        """Per batch row, the global steps of `canvas` where the row was active (its first step if none)."""
        steps, active = self.active_rows(canvas)
        return [[s for k, s in enumerate(steps) if bool(active[k, b])] or steps[:1] for b in range(active.shape[1])]

    def final_tokens(self, canvas: int = 0) -> torch.Tensor:
        """`[B, L]` the emitted tokens of `canvas`: each row's argmax canvas at its last active step."""
        arg = self.records["argmax_canvas"]
        return torch.stack([arg[st[-1], b] for b, st in enumerate(self.row_steps(canvas))])

    def answer_mask(self, eos_id: int | None, *, canvas: int = 0, include_eos: bool = True) -> torch.Tensor:
        """`[B, L]` bool: the answer positions of `canvas`'s final tokens (up to the first `eos_id`)."""
        return answer_mask(self.final_tokens(canvas), eos_id, include_eos)

    def outputs(self, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits `[batch, pos, vocab]`, emitted tokens `[batch, pos]`) of a run recorded with
        `record=("final_logits",)` (the outputs only: memory independent of the step count) or
        `record=("logits",)` (every step).

        step None = the final output: DiffusionGemma: per canvas, each row's logits at its last active
        step (canvases concatenated along pos) and the emitted argmax canvas; AR: the logits of every
        generated token. step s = the state after execution step s (a row that had stopped keeps its
        final values): needs "logits" recorded at steps up to s, or s at or past its canvas's end.
        """
        active, canvas, argmax = self.records["active"], self.records["canvas"], self.records["argmax_canvas"]
        picks = output_steps(self.kind, active, canvas, step)
        rows = torch.arange(active.shape[1])
        tokens = torch.cat([argmax[s, rows] for s in picks], 1)
        recorded = self.recorded_steps
        if "logits" in self.activations and all(int(s) in recorded for p in picks for s in p):
            logits = self.activations["logits"]
            index = {s: i for i, s in enumerate(recorded)}
            return torch.cat([logits[torch.tensor([index[int(s)] for s in p]), rows] for p in picks], 1), tokens
        final = self.records.get("final_logits")
        if final is not None and final.numel():
            if step is None:
                return torch.cat(list(final), 1), tokens
            c = int(canvas[min(step, len(canvas) - 1)])
            ends = output_steps(self.kind, active, canvas, None)
            if torch.equal(picks[0], ends[c if self.kind == "diffusion" else 0]):
                return final[c].clone(), tokens
        raise TrajectoryError(f"the outputs {'after step ' + str(step) if step is not None else ''} need logits this run "
                              "did not keep; capture with record=('final_logits',) for the final outputs or "
                              "record=('logits',) (steps=slice(0, step + 1)) for the state after a step")

    def output_tokens(self, step: int | None = None) -> torch.Tensor:
        """`[batch, pos]` the emitted tokens of `outputs(step)`, from the per-step records alone (no logits needed)."""
        active, canvas, argmax = self.records["active"], self.records["canvas"], self.records["argmax_canvas"]
        rows = torch.arange(active.shape[1])
        return torch.cat([argmax[s, rows] for s in output_steps(self.kind, active, canvas, step)], 1)

    # ---- tokens as text -----------------------------------------------------------------------
    def _tokenizer_or(self, tokenizer):
        tok = tokenizer if tokenizer is not None else self.tokenizer
        if tok is None:
            raise TrajectoryError("no tokenizer to read tokens with: pass tokenizer=load_tokenizer(model) or attach the "
                                  "model (traj.attach(model))")
        return tok

    def prompt_ids(self, batch: int = 0, tokenizer=None) -> torch.Tensor:
        """`[n]` the prompt of row `batch` without its left padding (BOS first)."""
        tok = self._tokenizer_or(tokenizer)
        ids = self.sequences[batch, :self.meta["prompt_length"]]
        pad = tok.pad_token_id
        start = 0
        while pad is not None and start < ids.numel() and int(ids[start]) == pad:
            start += 1
        return ids[start:]

    def canvas_ids(self, step: int | None = None, batch: int = 0, record: str = "argmax_canvas") -> torch.Tensor:
        """`[L]` canvas tokens of row `batch`: at `step` the `record` canvas (argmax_canvas, sampled_canvas or
        input_canvas) of that step; None = every generated token (all canvases, what `generate` returned)."""
        if step is None:
            return self.sequences[batch, self.meta["prompt_length"]:]
        if record not in ("argmax_canvas", "sampled_canvas", "input_canvas"):
            raise TrajectoryError(f"unknown canvas record {record!r}; choose argmax_canvas, sampled_canvas or input_canvas")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < self.n_steps:
            raise TrajectoryError(f"step {step!r} is out of range: the trajectory has {self.n_steps} steps "
                                  f"(0..{self.n_steps - 1})")
        return self.records[record][step, batch]

    def prompt_str_tokens(self, batch: int = 0, tokenizer=None) -> list[str]:
        """The prompt's tokens as text (`dgt_interp.tokenizer.to_str_tokens`), padding dropped."""
        tok = self._tokenizer_or(tokenizer)
        return to_str_tokens(tok, self.prompt_ids(batch, tok))

    def canvas_str_tokens(self, step: int | None = None, batch: int = 0, tokenizer=None,
                          record: str = "argmax_canvas") -> list[str]:
        """The canvas tokens (`canvas_ids`) as text."""
        return to_str_tokens(self._tokenizer_or(tokenizer), self.canvas_ids(step, batch, record))

    def to_str_tokens(self, step: int | None = None, batch: int = 0, tokenizer=None,
                      record: str = "argmax_canvas") -> list[str]:
        """Position labels of row `batch`: the prompt as `p{i}:'tok'` (p0 = BOS, padding dropped), then the
        canvas (`canvas_ids(step)`; None = the generated tokens) as `c{j}:'tok'`, e.g.
        `["p0:'<bos>'", "p1:'def'", "c0:' foo'", ...]`: prompt and canvas positions never share a name."""
        tok = self._tokenizer_or(tokenizer)
        return (position_labels(self.prompt_str_tokens(batch, tok), "p")
                + position_labels(self.canvas_str_tokens(step, batch, tok, record), "c"))

    # ---- access -----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        """`[R, B, P, ...]` for a recorded hook name or opt-in record; a per-step record by its name."""
        if name in self.records:
            return self.records[name]
        if name not in self.activations:
            raise TrajectoryError(
                f"{name!r} was not recorded; recorded: {', '.join(self.names) or '(none)'}; "
                "pass it in capture(..., names=[...]) (or record=[...] for logits)"
            )
        return self.activations[name]

    def fired(self, name: str) -> torch.Tensor:
        """`[R]` bool: recorded steps at which hook `name` fired (zeros are stored where it did not)."""
        self[name]  # raises a helpful error for unknown names
        return torch.tensor(self._fired[name], dtype=torch.bool)

    def stack(self, pattern: str) -> torch.Tensor:
        """All recorded names matching a glob with one `*` for the layer, stacked as `[R, layer, B, P, ...]`.

        >>> traj.stack("blocks.*.hook_resid_post").shape   # [R, n_layers, B, P, d]
        """
        hits = sorted((n for n in self.activations if fnmatch.fnmatchcase(n, pattern)), key=natural_key)
        if not hits:
            raise TrajectoryError(f"no recorded name matches {pattern!r}; recorded: {', '.join(self.names)}")
        return torch.stack([self.activations[n] for n in hits], dim=1)

    def step_index(self, step: int) -> int:
        """Axis-0 index into `traj[name]` of execution step `step` (one-line error if not recorded)."""
        steps = self.recorded_steps
        if not isinstance(step, int) or step not in steps:
            rng = f"{steps[0]}..{steps[-1]}" if steps else "none"
            raise TrajectoryError(
                f"step {step!r} has no recorded activations (recorded steps: {rng} of {self.n_steps}); "
                "capture with steps=None to record every step"
            )
        return steps.index(step)

    def cache(self, step: int, model=None):
        """A TransformerLens `ActivationCache` of execution step `step` (`[B, P, ...]` per hook name): a
        `step_cache.StepCache`, whose `accumulated_resid`, `decompose_resid`, `apply_ln_to_stack`,
        `logit_attrs` (and `logit_attribution`, `softcap`) are exact on DiffusionGemma: the stream starts at
        the self-conditioned embedding, the final RMSNorm weight and the logit soft-cap are applied, and a
        name they need but that was not recorded is a one-line `StepCacheError` naming it.

        Residual names that are the same tensor here are filled in (`blocks.{l}.hook_resid_pre` from
        `blocks.{l-1}.hook_resid_post`, block 0's from `self_cond.hook_out`), so recording
        `blocks.*.hook_resid_post` plus `blocks.0.hook_resid_pre` suffices for `accumulated_resid`;
        `decompose_resid` also needs `blocks.*.hook_attn_out` and `blocks.*.hook_mlp_out`
        (`traj.run_with_cache(step)` re-runs the step with every name instead).
        """
        if model is not None and model is not self.model:
            self.attach(model)
        model = self.model
        if model is None:
            raise TrajectoryError("this trajectory has no model attached; call traj.cache(step, model=model)")
        i = self.step_index(step)
        data = {n: self.activations[n][i] for n in self.activations if n not in OPTIONAL_RECORDS}
        # Fill residual names that are the same tensor in this model: the input of block l+1 is the
        # output of block l, and block 0's input is the self-conditioning output.
        n_layers = model.config.get_text_config().num_hidden_layers
        for layer in range(n_layers):
            pre, prev = f"blocks.{layer}.hook_resid_pre", f"blocks.{layer - 1}.hook_resid_post"
            if pre not in data:
                src = prev if layer else "self_cond.hook_out"
                if src in data:
                    data[pre] = data[src]
        bridge = bridge_for(model, "full").bridge
        return StepCache(data, bridge, model, step=step)

    # ---- re-running one step (TransformerLens style) -------------------------------------------
    def run_step(self, step: int, model=None, *, fwd_hooks=(), names=None, backend: str = "tl",
                 attention_mask=None):
        """Re-run denoising step `step` from its recorded inputs (input canvas, self-conditioning logits,
        the encoder cache it read) with TL hooks: a `replay.StepRun` (`.logits`, `.processed_logits`
        `[B, L, V]`, `.cache` an `ActivationCache` of `names`). With no hooks it equals the recorded
        step bit for bit. Details: `dgt_interp.replay`."""
        from dgt_interp.replay import run_step  # replay imports capturing, which imports this module

        return run_step(self, self._model_or(model), step, fwd_hooks=fwd_hooks, names=names, backend=backend,
                        attention_mask=attention_mask)

    def run_with_cache(self, step: int, model=None, *, names="*", fwd_hooks=(), backend: str = "tl"):
        """TL's `run_with_cache` on one recorded step: `(logits [B, L, V], ActivationCache)`, every hook
        name by default (`names=` a name, glob or list to keep fewer)."""
        out = self.run_step(step, model, fwd_hooks=fwd_hooks, names=names, backend=backend)
        return out.logits, out.cache

    def run_with_hooks(self, step: int, model=None, *, fwd_hooks=(), backend: str = "tl"):
        """TL's `run_with_hooks` on one recorded step: the logits `[B, L, V]` with `fwd_hooks` applied."""
        return self.run_step(step, model, fwd_hooks=fwd_hooks, backend=backend).logits

    def _model_or(self, model):
        if model is not None and model is not self.model:
            self.attach(model)
        if self.model is None:
            raise TrajectoryError("this trajectory has no model attached; pass model= (the captured model)")
        return self.model

    # ---- memory and disk --------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held in memory by records and activations (0 for activations kept on disk)."""
        total = sum(t.numel() * t.element_size() for t in self.records.values())
        total += self.sequences.numel() * self.sequences.element_size()
        if not isinstance(self.activations, DiskActivations):
            total += sum(t.numel() * t.element_size() for t in self.activations.values())
        return total

    def _specs(self) -> dict[str, dict]:
        if isinstance(self.activations, DiskActivations):
            return self.activations.specs
        return {n: {"shape": list(t.shape[1:]), "dtype": str(t.dtype)} for n, t in self.activations.items()}

    def save(self, out_dir: str | Path) -> Path:
        """Write this trajectory to `out_dir` as a whole: safetensors + `meta.json` (with a sha256 per
        file) are written into a temporary sibling that replaces `out_dir` in one step
        (`atomic.atomic_dir`), so an interrupted save leaves the old trajectory or the new one."""
        root = Path(out_dir)
        if root.exists() and not root.is_dir():
            raise TrajectoryError(f"{str(root)!r} exists and is not a directory; save to a directory path")
        with atomic_dir(root) as tmp:
            for i, s in enumerate(self.recorded_steps):
                src = step_file(self.root, s) if isinstance(self.activations, DiskActivations) else None
                if src is not None and src.is_file():
                    step_file(tmp, s).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, step_file(tmp, s))
                elif any(self._fired[n][i] for n in self.activations):
                    save_tensors(step_file(tmp, s), {n: self.activations[n][i] for n in self.activations
                                                     if self._fired[n][i]})
            self.write_records(tmp)
        if isinstance(self.activations, DiskActivations) and self.root is not None and \
                self.root.resolve() == root.resolve():
            self.activations.root, self.activations._verified = root, set()
        return root

    def write_records(self, root: str | Path) -> dict[str, str]:
        """Write `records.safetensors` and `meta.json` (last) into `root` beside the step files already
        there, recording each file's sha256. The last part of `save`; call `save` unless you stream
        step files yourself (as `capture(storage="disk")` does, inside its own `atomic_dir`). Returns
        the digests (`{"records.safetensors": sha256, "steps/000000.safetensors": sha256, ...}`)."""
        root = Path(root)
        save_tensors(root / "records.safetensors", {"sequences": self.sequences, **self.records})
        files = [root / "records.safetensors"] + sorted((root / "steps").glob("*.safetensors"))
        digests = {f.name if f.parent == root else f"steps/{f.name}": file_digest(f) for f in files}
        meta = dict(self.meta, format_version=FORMAT_VERSION, specs=self._specs(), fired=self._fired, digests=digests)
        write_text(root / "meta.json", json.dumps(meta, indent=1))
        return digests

    @classmethod
    def load(cls, out_dir: str | Path, model=None) -> "Trajectory":
        """Read a saved trajectory; activations are read from disk lazily on access.

        One-line `TrajectoryError`s: no / unreadable `meta.json`, another format version, missing
        keys, a records file whose sha256 differs (step files are checked when first read), and a
        `model` whose weights are not the ones captured (`model_fingerprint`)."""
        root = Path(out_dir)
        if not (root / "meta.json").is_file():
            raise TrajectoryError(f"{str(root)!r} holds no saved trajectory (no meta.json); pass the dir given to save()")
        try:
            meta = json.loads((root / "meta.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TrajectoryError(f"{str(root / 'meta.json')!r} is corrupt ({e}); re-save the trajectory") from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            version = meta.get("format_version") if isinstance(meta, dict) else None
            raise TrajectoryError(f"{str(root)!r} is a trajectory of format version {version!r}; this dgt_interp reads "
                                  f"version {FORMAT_VERSION}: re-capture it with this version")
        missing = [k for k in ("specs", "fired", "recorded_steps", "kind", "digests") if k not in meta]
        if missing:
            raise TrajectoryError(f"{str(root / 'meta.json')!r} lacks {missing[0]!r}; re-save the trajectory")
        specs, fired, digests = meta.pop("specs"), meta.pop("fired"), meta.pop("digests")
        meta.pop("format_version")
        records_file = root / "records.safetensors"
        if not records_file.is_file() or file_digest(records_file) != digests.get("records.safetensors"):
            raise TrajectoryError(f"{str(records_file)!r} is missing or corrupt (its sha256 differs from meta.json); "
                                  "re-save or re-capture the trajectory")
        with safe_open(str(records_file), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        sequences = tensors.pop("sequences")
        step_digests = {k.split("/", 1)[1]: v for k, v in digests.items() if k.startswith("steps/")}
        acts = DiskActivations(root, meta["recorded_steps"], specs, fired, step_digests)
        traj = cls(meta=meta, sequences=sequences, records=tensors, activations=acts, fired=fired, model=None, root=root)
        if model is not None:
            traj.attach(model)
        return traj

    def to_html(self, path: str | Path, **kwargs) -> Path:
        """Write the interactive viewer page of this run to `path` (one self-contained HTML file):
        `dgt_interp.viz.viewer.write_page(self, path, **kwargs)` (model=, tokenizer=, lens=, patching=,
        k=, batch=; docs/viewer.md).

        The page is drawn by the analysis layer (the lens, the commit grid); core names that module as
        a string and loads it on call, as the package's lazy top-level exports do, so importing
        `trajectory` never imports the analysis layer."""
        return importlib.import_module("dgt_interp.viz.viewer").write_page(self, path, **kwargs)

    def attach(self, model) -> "Trajectory":
        """Attach the model this trajectory was captured with (for `cache`, tokenizer lookups); a one-line
        error if its weights are not the captured ones."""
        want = self.meta.get("model_fingerprint")
        if want is not None and model_fingerprint(model) != want:
            raise TrajectoryError(f"this trajectory was captured with another model (fingerprint {want[:12]}…, this "
                                  f"{type(model).__name__} has {model_fingerprint(model)[:12]}…); load the captured model")
        self.model = model
        return self

    def to_memory(self) -> "Trajectory":
        """A copy with every activation loaded into RAM."""
        acts = {n: self.activations[n] for n in self.activations}
        return Trajectory(meta=dict(self.meta), sequences=self.sequences, records=dict(self.records),
                          activations=acts, fired=dict(self._fired), model=self.model)

    def __repr__(self) -> str:
        b, t = self.sequences.shape
        return (f"Trajectory(kind={self.kind!r}, batch={b}, steps={self.n_steps}, recorded={len(self.recorded_steps)}, "
                f"canvases={int(self.records['canvas'].max()) + 1 if self.n_steps else 0}, names={len(self.names)}, "
                f"{self.nbytes / 2**20:.1f} MiB in memory)")


def layer_of(name: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


__all__ = ["Trajectory", "TrajectoryError", "DiskActivations", "STEP_RECORDS", "OPTIONAL_RECORDS", "output_steps",
           "select_outputs"]
