"""Logit lens and tuned lens over (step, layer, position) of a recorded denoising run.

A lens reads the residual stream after layer l (`blocks.{l}.hook_resid_post`) at execution step s
and decodes it into a token distribution through exactly what the model applies after its last
layer (`Unembed`): final RMSNorm → tied unembedding (`lm_head`) → logit soft-capping
`tanh(x / c) * c`. Those modules are taken from the model itself and called, never copied, so at
the last layer the logit lens reproduces the model's own raw logits at every step (the logits
before the sampler's temperature schedule; the *processed* logits the sampler and the next step's
self-conditioning see are these divided by the step's temperature).

- `LogitLens(model)`: decodes each layer's residual as if it were the last one.
- `TunedLens(model, step_buckets=1)`: first maps layer l's residual through a learned affine
  translator `h → h + A_l h + b_l` (initialised at identity, trained with `fit` to minimise
  KL(final ‖ lens) on captured trajectories; `step_buckets > 1` gives separate translators to the
  first denoising steps of a canvas). The last layer needs none (it is the model's output).
  `save(dir)` / `TunedLens.load(dir, model)` round-trip exactly (safetensors + JSON).

Both return compact tensors (`LensResult`): top-k ids and probabilities, probabilities of chosen
target tokens, entropy, and KL to the final distribution, over `[step, layer, batch, pos]`. The
full `[step, layer, batch, pos, vocab]` tensor is never built: rows are decoded in chunks of at
most `chunk_elements` logits and reduced at once, so a 262k vocabulary fits.

"Final distribution" = the model's own output distribution at the same step and position
(softmax of its raw logits, temperature 1); the lens distributions are also at temperature 1.

>>> traj = lens_capture(model, ["1234+5678="])               # records blocks.*.hook_resid_post
>>> res = LogitLens(model).run(traj, targets=[tok.convert_tokens_to_ids("6")])
>>> res.kl_table()                                            # [step, layer] mean KL to final
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torch.func import functional_call
from transformers import DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM

from dgt_interp.atomic import atomic_dir, save_tensors, write_text
from dgt_interp.backends.devices import execution_device, is_dispatched, resolved_tensors
from dgt_interp.backends.tl import UnsupportedModelError
from dgt_interp.capturing import capture
from dgt_interp.errors import DgtInterpError
from dgt_interp.selection import select
from dgt_interp.tokenizer import load_tokenizer, prompt_batch

RESID = "blocks.{}.hook_resid_post"
FORMAT_VERSION = 1


class LensError(DgtInterpError, ValueError):
    """Bad lens input (one-line message that says what to do)."""


# ---------------------------------------------------------------------------------------------
# the model's own post-last-layer map
# ---------------------------------------------------------------------------------------------


class Unembed:
    """What the model applies after its last layer: final norm → `lm_head` → soft-cap (`[..., d] → [..., V]`).

    Calls the model's own modules (with detached parameters, so training a lens never touches or
    accumulates gradients into the model). Casts to float32 where the model does: DiffusionGemma
    casts before the soft-cap, Gemma 4 after it. Runs on the head's execution device (for a model
    dispatched by accelerate: where its hook computes; offloaded weights are read once and kept).
    """

    def __init__(self, model):
        if not isinstance(model, (DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM)):
            raise UnsupportedModelError(f"a lens needs DiffusionGemmaForBlockDiffusion or Gemma4ForCausalLM, got {type(model).__name__}; "
                            "load one with dgt_interp.models.load_model")
        text = model.config.get_text_config()
        if isinstance(model, DiffusionGemmaForBlockDiffusion):
            norm, self.softcap, self.cast_first = "model.decoder.norm", model.final_logit_softcapping, True
        else:
            norm, self.softcap, self.cast_first = "model.norm", text.final_logit_softcapping, False
        self.norm, self.head = model.get_submodule(norm), model.lm_head
        self._model, self._prefixes, self._params = model, {self.norm: norm, self.head: "lm_head"}, None
        self.model_class = type(model).__name__
        self.d_model = int(text.hidden_size)
        self.n_layers = int(text.num_hidden_layers)
        self.vocab_size = int(text.vocab_size)

    @property
    def device(self) -> torch.device:
        return execution_device(self.head)

    def _call(self, module, x):
        if not is_dispatched(self._model):
            return functional_call(module, {n: p.detach() for n, p in module.named_parameters()}, (x,))
        # dispatched by accelerate: offloaded weights sit on `meta` and its hook would swap them in
        # and out around a functional call; run a hook-free shallow copy over the real values (read once)
        if self._params is None:
            self._params = {m: _unhooked(m, resolved_tensors(self._model, prefix)) for m, prefix in self._prefixes.items()}
        return self._params[module](x)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """`[..., d]` residual → `[..., V]` float32 logits, exactly as the model computes them."""
        x = self._call(self.head, self._call(self.norm, h.to(self.device, self.head.weight.dtype)))
        if self.cast_first:
            x = x.float()
        if self.softcap is not None:
            x = torch.tanh(x / self.softcap) * self.softcap
        return x.float()


def _unhooked(module, params: dict[str, torch.Tensor]):
    """A shallow copy of leaf `module` without accelerate's hook, computing with `params` (detached)."""
    clone = copy.copy(module)
    for attr in ("forward", "_hf_hook", "_old_forward"):
        clone.__dict__.pop(attr, None)
    clone._parameters = {**module._parameters, **params}  # keeps e.g. a None bias
    return clone


# ---------------------------------------------------------------------------------------------
# compact outputs
# ---------------------------------------------------------------------------------------------


def compact_outputs(logits: torch.Tensor, final_logits: torch.Tensor | None = None, *, k: int = 5,
                    targets=()) -> dict[str, torch.Tensor]:
    """Reduce `[n, V]` logits to compact per-row outputs (what `Lens.run` stores per chunk).

    Returns `top_ids`/`top_probs` `[n, k]`, `entropy` `[n]` (nats), `target_probs` `[n, T]`, and
    `kl_to_final` `[n]` = KL(softmax(final_logits) ‖ softmax(logits)) in nats when `final_logits` is given.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    top_logp, top_ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    out = {"top_ids": top_ids, "top_probs": top_logp.exp(), "entropy": -(p * logp).sum(-1),
           "target_probs": p[:, list(targets)]}
    if final_logits is not None:
        final_logp = torch.log_softmax(final_logits.float(), dim=-1)
        out["kl_to_final"] = (final_logp.exp() * (final_logp - logp)).sum(-1).clamp_min(0.0)
    return out


_RESULT_TENSORS = ("top_ids", "top_probs", "entropy", "kl_to_final", "target_probs", "valid")


@dataclass
class LensResult:
    """Compact lens outputs over `[step, layer, batch, pos]` (the vocabulary axis is never kept whole).

    steps      execution-order steps (axis 0), layers (axis 1: `blocks.{l}.hook_resid_post`),
    positions  canvas positions (axis 3); targets: token ids of `target_probs`' last axis.
    top_ids, top_probs  [S, Ly, B, P, k]   the lens's k most likely tokens and their probabilities
    entropy             [S, Ly, B, P]      entropy of the lens distribution (nats)
    kl_to_final         [S, Ly, B, P]      KL(model's output ‖ lens) (nats); 0 at the last layer (logit lens)
    target_probs        [S, Ly, B, P, T]   probability of each target token
    valid               [S, B, P]          entries holding a computed residual: diffusion = rows still
                                           denoising; AR twin = positions already generated (p <= step)
    """

    lens: str
    steps: list[int]
    layers: list[int]
    positions: list[int]
    targets: list[int]
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    entropy: torch.Tensor
    kl_to_final: torch.Tensor
    target_probs: torch.Tensor
    valid: torch.Tensor
    meta: dict = field(default_factory=dict)

    def _mean_over_valid(self, x: torch.Tensor) -> torch.Tensor:
        w = self.valid[:, None].float()  # [S, 1, B, P]
        return (x * w).sum((-2, -1)) / w.sum((-2, -1))  # NaN where a step has no valid entry

    def kl_table(self) -> torch.Tensor:
        """`[step, layer]` mean KL to the final distribution over valid (batch, pos)."""
        return self._mean_over_valid(self.kl_to_final)

    def entropy_table(self) -> torch.Tensor:
        """`[step, layer]` mean lens entropy over valid (batch, pos)."""
        return self._mean_over_valid(self.entropy)

    def position_index(self, position: int) -> int:
        if position not in self.positions:
            raise LensError(f"position {position!r} is not in this lens result (positions {self.positions[0]}.."
                            f"{self.positions[-1]}); run the lens with positions=None")
        return self.positions.index(position)

    def target_index(self, target: int) -> int:
        if target not in self.targets:
            raise LensError(f"target token {target!r} was not tracked (targets: {self.targets or 'none'}); "
                            "pass it in lens.run(..., targets=[...])")
        return self.targets.index(target)

    def save(self, path: str | Path) -> Path:
        """Write `path` (.safetensors; the metadata goes into its header as JSON)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"lens": self.lens, "steps": self.steps, "layers": self.layers, "positions": self.positions,
                "targets": self.targets, "meta": self.meta, "format_version": FORMAT_VERSION}
        tensors = {n: getattr(self, n).contiguous() for n in _RESULT_TENSORS}
        save_tensors(path, tensors, metadata={"lens_result": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LensResult":
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("lens_result", "null") or "null")
            if meta is None:
                raise LensError(f"{str(path)!r} is not a lens result file; write one with LensResult.save")
            tensors = {n: f.get_tensor(n) for n in _RESULT_TENSORS}
        meta.pop("format_version", None)
        return cls(**meta, **tensors)


# ---------------------------------------------------------------------------------------------
# reading a trajectory
# ---------------------------------------------------------------------------------------------


def _layout(traj, steps: list[int], positions: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(`valid` [S, B, P], `fresh` [S, B, P], `origin` [S, P]) for the chosen steps and positions.

    origin = within-canvas step at which the residual was computed (diffusion: the step itself; AR
    twin: the residual at position p was computed at step p). fresh = computed at this very step
    (diffusion: = valid; AR: p == step), so training counts each computation once.
    """
    pos = torch.tensor(positions)
    step_t = torch.tensor(steps)
    active = traj.records["active"][step_t].bool()  # [S, B]
    if traj.kind == "ar":
        written = pos[None, :] <= step_t[:, None]  # [S, P]
        valid = active[:, :, None] & written[:, None, :]
        fresh = valid & (pos[None, :] == step_t[:, None])[:, None, :]
        origin = torch.minimum(pos[None, :], step_t[:, None])
    else:
        valid = active[:, :, None].expand(-1, -1, len(positions)).clone()
        fresh = valid
        origin = traj.step_in_canvas()[step_t][:, None].expand(-1, len(positions)).clone()
    return valid, fresh, origin


def lens_capture(model, prompts: list[str], *, tokenizer=None, chat: bool = False, seed: int = 0, record=(),
                 **generation_kwargs):
    """Capture what a lens needs (`blocks.*.hook_resid_post` at every step) for text prompts.

    A left-padded batch through the model's own tokenizer (`tokenizer`, default
    `load_tokenizer(model)`; `chat=True` applies its chat template); `record=["logits"]` also keeps
    the model's own per-step logits. `generation_kwargs` go to `generate` unchanged.
    """
    tok = tokenizer if tokenizer is not None else load_tokenizer(model)
    batch = prompt_batch(list(prompts), tok, chat=chat)
    return capture(model, batch["input_ids"], attention_mask=batch["attention_mask"],  # capture moves them to the model
                   names="blocks.*.hook_resid_post", seed=seed, record=record, **generation_kwargs)


# ---------------------------------------------------------------------------------------------
# lenses
# ---------------------------------------------------------------------------------------------


class Lens(nn.Module):
    """A map from (residual after layer l, step) to logits: `translate` then the model's own `Unembed`.

    Subclasses override `translate`; `run` applies the lens over a whole `Trajectory`. At the last
    layer every lens is the model's own output (no translation), so KL to final is 0 there.
    """

    name = "lens"

    def __init__(self, model):
        super().__init__()
        self.unembed = Unembed(model)  # a plain object: the model's weights are not part of the lens

    @property
    def n_layers(self) -> int:
        return self.unembed.n_layers

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise LensError(f"layer {layer!r} is out of range: the model has {self.n_layers} layers (0..{self.n_layers - 1})")
        return layer

    def translate(self, h: torch.Tensor, layer: int, step: torch.Tensor | int | None = None) -> torch.Tensor:
        """`[n, d]` residual after `layer` (computed at within-canvas step `step`, `[n]` or int) → `[n, d]`."""
        return h

    def logits(self, h: torch.Tensor, layer: int, step: torch.Tensor | int | None = None) -> torch.Tensor:
        """Full `[..., V]` lens logits of a `[..., d]` residual after `layer` (use on small inputs)."""
        self.check_layer(layer)
        shape = h.shape[:-1]
        flat = h.reshape(-1, h.shape[-1])
        if isinstance(step, torch.Tensor):
            step = step.reshape(-1)
        return self.unembed(self.translate(flat, layer, step)).reshape(*shape, -1)

    forward = logits

    @torch.no_grad()
    def run(self, traj, *, steps=None, layers=None, positions=None, targets=(), k: int = 5,
            chunk_elements: int = 2**24) -> LensResult:
        """Apply the lens at every chosen (step, layer, batch, position) of `traj`; compact outputs.

        Args:
            traj: a `Trajectory` holding `blocks.*.hook_resid_post` (see `lens_capture`).
            steps: execution-order steps among `traj.recorded_steps` (int, slice, list; None = all).
            layers: layers (int, slice, list; None = all).
            positions: canvas positions among `traj.positions` (None = all).
            targets: token ids whose probabilities to keep.
            k: top-k tokens kept per entry.
            chunk_elements: at most this many logits exist at once (rows are decoded in chunks).
        """
        u = self.unembed
        for what, v, low in (("k", k, 1), ("chunk_elements", chunk_elements, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise LensError(f"{what}={v!r} must be an int >= {low}")
        if traj.meta.get("model_class") not in (None, u.model_class):
            raise LensError(f"trajectory of a {traj.meta['model_class']} but the lens is for a {u.model_class}; "
                            "build the lens from the model that was captured")
        steps = select(steps, traj.recorded_steps, "step", "capture with steps=None to record every step", LensError)
        positions = select(positions, traj.positions, "position", "capture with positions=None to record every position",
                           LensError)
        layers = select(layers, self.n_layers, "layer", f"the model has {self.n_layers} layers", LensError)
        targets = [int(t) for t in targets]
        bad = [t for t in targets if not 0 <= t < u.vocab_size]
        if bad:
            raise LensError(f"target token id {bad[0]} is out of range: the vocabulary has {u.vocab_size} ids")
        missing = [RESID.format(layer) for layer in sorted(set(layers) | {self.n_layers - 1})
                   if RESID.format(layer) not in traj.names]
        if missing:
            raise LensError(f"{missing[0]!r} was not recorded; capture with names='blocks.*.hook_resid_post' "
                            "(dgt_interp.lens.lens_capture does)")
        s_idx = torch.tensor([traj.step_index(s) for s in steps])
        p_idx = torch.tensor([traj.positions.index(p) for p in positions])
        valid, _, origin = _layout(traj, steps, positions)

        def resid(layer):  # [S*B*P, d] for the chosen steps and positions
            t = traj[RESID.format(layer)][s_idx][:, :, p_idx]
            return t.reshape(-1, t.shape[-1])

        n_s, n_b, n_p = valid.shape
        rows = n_s * n_b * n_p
        step_of_row = origin[:, None, :].expand(n_s, n_b, n_p).reshape(-1)
        final = resid(self.n_layers - 1)
        per_layer = {layer: resid(layer) for layer in layers}
        kk = min(k, u.vocab_size)
        out = {"top_ids": torch.zeros(rows, len(layers), kk, dtype=torch.long),
               "top_probs": torch.zeros(rows, len(layers), kk), "entropy": torch.zeros(rows, len(layers)),
               "kl_to_final": torch.zeros(rows, len(layers)), "target_probs": torch.zeros(rows, len(layers), len(targets))}
        chunk = max(1, chunk_elements // u.vocab_size)
        for r0 in range(0, rows, chunk):
            r1 = min(rows, r0 + chunk)
            final_logits = u(final[r0:r1])
            st = step_of_row[r0:r1].to(u.device)
            for j, layer in enumerate(layers):
                lg = final_logits if layer == self.n_layers - 1 else \
                    u(self.translate(per_layer[layer][r0:r1].to(u.device).float(), layer, st))
                c = compact_outputs(lg, final_logits, k=kk, targets=targets)
                for name, t in c.items():
                    out[name][r0:r1, j] = t.cpu()

        def shaped(t):  # [S*B*P, Ly, ...] -> [S, Ly, B, P, ...]
            t = t.reshape(n_s, n_b, n_p, len(layers), *t.shape[2:])
            return t.permute(0, 3, 1, 2, *range(4, t.dim())).contiguous()

        return LensResult(self.name, steps, layers, positions, targets, valid=valid,
                          meta={"kind": traj.kind, "model_class": u.model_class, "n_layers": self.n_layers},
                          **{n: shaped(t) for n, t in out.items()})


class LogitLens(Lens):
    """Decode every layer's residual through the model's own final norm, unembedding and soft-cap."""

    name = "logit"


class TunedLens(Lens):
    """Logit lens after a learned per-layer affine translator `h → h + A_l h + b_l` (identity at init).

    `step_buckets` conditions on the denoising step: 1 shares translators across steps; n > 1 gives
    within-canvas steps 0..n-2 their own translators and one shared by all later steps (AR twin: the
    step is the token index). The last layer has no translator (its lens is the model's output).
    Parameters: `weight` `[bucket, layer, d, d]` (A), `bias` `[bucket, layer, d]` (b), layers 0..n-2.
    """

    name = "tuned"

    def __init__(self, model, *, step_buckets: int = 1):
        super().__init__(model)
        if not isinstance(step_buckets, int) or step_buckets < 1:
            raise LensError(f"step_buckets must be an int >= 1 (1 = share translators across steps), got {step_buckets!r}")
        self.step_buckets = step_buckets
        d, n = self.unembed.d_model, self.n_layers - 1
        device = self.unembed.device
        self.weight = nn.Parameter(torch.zeros(step_buckets, n, d, d, device=device))
        self.bias = nn.Parameter(torch.zeros(step_buckets, n, d, device=device))
        self.training_info: dict = {}

    def bucket(self, step: torch.Tensor | int | None) -> torch.Tensor | int:
        """Translator bucket of a within-canvas step (`[n]` or int); 0 when `step` is None."""
        if step is None:
            return 0
        if isinstance(step, torch.Tensor):
            return step.clamp(max=self.step_buckets - 1)
        return min(int(step), self.step_buckets - 1)

    def translate(self, h, layer, step=None):
        if layer == self.n_layers - 1:
            return h
        h = h.float()
        b = self.bucket(step)
        if isinstance(b, int):
            return h + h @ self.weight[b, layer].T + self.bias[b, layer]
        b = b.to(h.device)
        delta = h.new_zeros(h.shape)
        for v in b.unique().tolist():  # one matmul per bucket present (differentiable)
            idx = (b == v).nonzero().squeeze(-1)
            delta = delta.index_add(0, idx, h[idx] @ self.weight[v, layer].T + self.bias[v, layer])
        return h + delta

    # ---- training ---------------------------------------------------------------------------
    def fit(self, trajectories, *, iters: int = 300, lr: float = 1e-3, batch_size: int = 256, seed: int = 0,
            weight_decay: float = 0.0) -> list[float]:
        """Train the translators to minimise mean KL(final ‖ lens) over layers on captured trajectories.

        Uses every computed residual once (diffusion: every active (step, batch, pos); AR: the new
        position of each step). Memory: one layer's `[batch_size, vocab]` graph at a time. Minibatches are drawn with a generator seeded by `seed` (same data
        and seed → same lens). Returns the loss (mean KL over layers 0..n-2, nats) per iteration.
        """
        trajectories = [trajectories] if not isinstance(trajectories, (list, tuple)) else list(trajectories)
        xs, ss = [], []
        for traj in trajectories:
            missing = [RESID.format(layer) for layer in range(self.n_layers) if RESID.format(layer) not in traj.names]
            if missing:
                raise LensError(f"{missing[0]!r} was not recorded; capture with names='blocks.*.hook_resid_post'")
            steps, positions = traj.recorded_steps, traj.positions
            _, fresh, origin = _layout(traj, steps, positions)  # [S, B, P], [S, P]
            stack = torch.stack([traj[RESID.format(layer)] for layer in range(self.n_layers)], dim=3)  # [S, B, P, Ly, d]
            xs.append(stack[fresh].float())
            ss.append(origin[:, None, :].expand_as(fresh)[fresh])
        x, st = torch.cat(xs), torch.cat(ss)
        if len(x) == 0:
            raise LensError("no residuals to train on: the trajectories hold no active steps")
        u = self.unembed
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        losses = []
        for _ in range(iters):
            idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)
            h, s = x[idx].to(u.device), st[idx].to(u.device)
            with torch.no_grad():
                final_logp = torch.log_softmax(u(h[:, -1]), -1)
            p_final = final_logp.exp()
            loss = 0.0
            opt.zero_grad()
            for layer in range(self.n_layers - 1):
                # one layer's graph at a time: each layer has its own translator, so backward per layer
                # gives the gradients of the mean over layers exactly, holding one [batch, vocab] graph
                logp = torch.log_softmax(u(self.translate(h[:, layer], layer, s)), -1)
                kl = (p_final * (final_logp - logp)).sum(-1).mean()
                (kl / max(1, self.n_layers - 1)).backward()
                loss = loss + kl.detach()
            loss = loss / max(1, self.n_layers - 1)
            opt.step()
            losses.append(float(loss))
        self.training_info = {"iters": iters, "lr": lr, "batch_size": batch_size, "seed": seed,
                              "weight_decay": weight_decay, "examples": len(x), "final_loss": losses[-1] if losses else None}
        return losses

    # ---- disk -------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Write `tuned_lens.safetensors` (weight, bias) and `tuned_lens.json` to `out_dir`."""
        root = Path(out_dir)
        u = self.unembed
        tensors = {"weight": self.weight.detach().cpu().contiguous(), "bias": self.bias.detach().cpu().contiguous()}
        meta = {"format_version": FORMAT_VERSION, "model_class": u.model_class, "d_model": u.d_model,
                "n_layers": u.n_layers, "vocab_size": u.vocab_size, "step_buckets": self.step_buckets,
                "training": self.training_info}
        with atomic_dir(root) as tmp:  # both files, or the old lens: never one of each
            save_tensors(tmp / "tuned_lens.safetensors", tensors)
            write_text(tmp / "tuned_lens.json", json.dumps(meta, indent=1))
        return root

    @classmethod
    def load(cls, out_dir: str | Path, model) -> "TunedLens":
        """Read a lens written by `save` for `model` (one-line error if it belongs to another shape of model)."""
        root = Path(out_dir)
        if not (root / "tuned_lens.json").is_file() or not (root / "tuned_lens.safetensors").is_file():
            raise LensError(f"{str(root)!r} holds no tuned lens (tuned_lens.json + .safetensors); train one with "
                            "TunedLens.fit and save it, or `dgt-interp lens --fit-tuned DIR`")
        meta = json.loads((root / "tuned_lens.json").read_text())
        lens = cls(model, step_buckets=int(meta["step_buckets"]))
        u = lens.unembed
        have = {"model_class": u.model_class, "d_model": u.d_model, "n_layers": u.n_layers, "vocab_size": u.vocab_size}
        for key, value in have.items():
            if meta.get(key) != value:
                raise LensError(f"tuned lens in {str(root)!r} was trained for {key}={meta.get(key)!r} but this model has "
                                f"{value!r}; train a tuned lens for this model")
        with safe_open(str(root / "tuned_lens.safetensors"), framework="pt") as f:
            with torch.no_grad():
                lens.weight.copy_(f.get_tensor("weight"))
                lens.bias.copy_(f.get_tensor("bias"))
        lens.training_info = meta.get("training", {})
        return lens


def format_kl_table(*results: LensResult) -> str:
    """A printable `[step, layer]` table of mean KL to final (nats), one block per lens result."""
    lines = []
    for res in results:
        table = res.kl_table()
        lines.append(f"{res.lens} lens: mean KL(final || lens), nats; rows = step, cols = layer")
        lines.append("step " + "".join(f"{'L' + str(layer):>9}" for layer in res.layers))
        for i, s in enumerate(res.steps):
            cells = "".join(f"{'-' if math.isnan(v) else f'{v:.4f}':>9}" for v in table[i].tolist())
            lines.append(f"{s:>4} {cells}")
    return "\n".join(lines)


__all__ = ["Lens", "LogitLens", "TunedLens", "LensResult", "LensError", "Unembed", "compact_outputs",
           "format_kl_table", "lens_capture"]
