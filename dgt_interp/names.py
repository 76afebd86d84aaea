"""THE registry of hook names: TransformerLens names plus DiffusionGemma's self-conditioning extras.

A name is listed only if it fires on a real forward pass of the model (found once per model by a
probe pass, cached). Print them with `print(describe_names(model))`; pass them (or glob patterns such
as `"blocks.*.hook_resid_post"`) as `capture(..., names=...)` or `fwd_hooks=[(name, fn)]`.

Names of note (shapes for one decoder pass, `pos` = canvas positions):
  blocks.{l}.hook_resid_pre / hook_resid_post / hook_attn_out / hook_mlp_out / hook_resid_mid  [batch, pos, d]
  self_cond.hook_logits_in   [batch, pos, vocab]  previous step's processed logits (editable; not at a canvas's first step)
  self_cond.hook_soft_embed  [batch, pos, d]      softmax(logits) @ E * sqrt(d)
  self_cond.hook_signal      [batch, pos, d]      what self-conditioning adds to the token embeddings (editable)
  self_cond.hook_out         [batch, pos, d]      = blocks.0.hook_resid_pre
  blocks.{l}.hook_cache_k / hook_cache_v  [batch, cached_pos, kv_head, d_head]  the encoder KV cache layer l
                             reads (prompt + earlier canvases): the prompt's only path into the decoder (editable)
  blocks.{l}.attn.hook_pattern / hook_attn_scores  [batch, head, pos, cached_pos + pos]  attention weights
                             (after softmax) / scores of the canvas queries over the cached keys then the canvas
                             keys. DiffusionGemma only. They exist only under eager attention, so naming one makes
                             the run use TL's eager attention instead of the model's kernel (same maths, rounding may
                             differ); name them explicitly (a glob that matches other names does not pull them in).
Known limits (TransformerLens on this model): `router.hook_out` is read-only (routing runs inside HF);
`hook_embed` is taken before self-conditioning is added; on the AR twin attention patterns are not
recorded (use TL directly: `bridge_for(model, "attention").bridge.run_with_cache(ids)`).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
import weakref

import torch

from dgt_interp.backends.devices import execution_device
from dgt_interp.backends.tl import DIFFUSION_ARCH, LEVELS, architecture_of, bridge_for
from dgt_interp.errors import DgtInterpError

READ_ONLY = ("router.hook_out",)
CACHE_HOOKS = ("hook_cache_k", "hook_cache_v")
NOTES = {
    "self_cond.hook_logits_in": "editable; absent at a canvas's first step",
    "self_cond.hook_signal": "editable; added to the token embeddings",
    "self_cond.hook_soft_embed": "softmax(logits) @ E * sqrt(d); zeros at a canvas's first step",
    "self_cond.hook_out": "= blocks.0.hook_resid_pre",
    "hook_embed": "token embeddings before self-conditioning",
    "embed.hook_out": "token embeddings before self-conditioning",
    "hook_cache_k": "editable; the encoder KV cache (prompt + earlier canvases) this layer reads",
    "hook_cache_v": "editable; the encoder KV cache (prompt + earlier canvases) this layer reads",
    "hook_pattern": "eager attention only: [batch, head, pos, cached + canvas keys], rows sum to 1",
    "hook_attn_scores": "eager attention only: the scores before the softmax",
}
ATTENTION_ONLY = ("hook_pattern", "hook_attn_scores")  # fire only at bridge level "attention" (eager)


class HookNameError(DgtInterpError, ValueError):
    """An unknown, out-of-range or unusable hook name (one-line message that says what to do)."""


def natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


_PROBES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@torch.no_grad()
def _probe(model, level: str) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """name -> (shape at batch 2, layout) for every hook name that fires at `level`.

    layout: "bp" = `[batch, pos, ...]`, "flat" = `[batch * pos, ...]` (MoE router/experts), None = other.

    Found by a short real `generate` on the bridged twin (2 steps, a left-padded batch of 2), so only
    names that fire under generation are listed. The global RNG is left untouched.
    """
    per_model = _PROBES.setdefault(model, {})
    bridged = bridge_for(model, level)
    cached = per_model.get(level)
    if cached is not None and cached[0]() is bridged:  # a rebuilt twin (the model changed): probe again
        return cached[1]
    twin = bridged.twin
    text = twin.config.get_text_config()
    canvas = getattr(twin.config, "canvas_length", None)
    device = execution_device(twin)  # not twin.device: `meta` when the first weights are offloaded
    ids = torch.full((2, 4), text.bos_token_id if text.bos_token_id is not None else 0, device=device)
    ids[:, 1:] = torch.arange(3, 6, device=device) % text.vocab_size
    mask = torch.ones_like(ids)
    ids[1, 0], mask[1, 0] = (text.pad_token_id or 0), 0
    last: dict[int, tuple[int, ...]] = {}

    def record(t, hook):
        if isinstance(t, torch.Tensor):
            last[id(hook)] = tuple(t.shape)

    points = {id(p): p for p in bridged.hook_points.values()}
    for p in points.values():
        p.add_hook(record)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if bridged.arch == DIFFUSION_ARCH:
                twin.generate(input_ids=ids, attention_mask=mask, max_new_tokens=canvas, max_denoising_steps=2,
                              generation_config=model.generation_config)
            else:
                twin.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, min_new_tokens=2,
                              do_sample=False, generation_config=model.generation_config)
    finally:
        for p in points.values():
            p.remove_hooks("fwd")
    out = {}
    for name, point in bridged.hook_points.items():
        shape = last.get(id(point))
        if shape is None:
            continue
        n_pos = canvas if bridged.arch == DIFFUSION_ARCH else 1  # AR: the last step sees one position
        if name.endswith(CACHE_HOOKS):  # positions are cached (prompt) positions, never canvas ones
            layout = None
        elif len(shape) >= 2 and shape[0] == 2 and shape[1] == n_pos:
            layout = "bp"
        elif len(shape) >= 1 and shape[0] == 2 * n_pos:
            layout = "flat"
        else:
            layout = None
        out[name] = (shape, layout)
    out = {n: out[n] for n in sorted(out, key=natural_key)}  # natural order once, not per lookup
    per_model[level] = (weakref.ref(bridged), out)
    return out


def _attention_names(model) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """The names that fire only under eager attention (DiffusionGemma; empty for other models)."""
    if architecture_of(model) != DIFFUSION_ARCH:
        return {}
    full = _probe(model, "full")
    return {n: v for n, v in _probe(model, "attention").items() if n not in full}


def list_names(model, pattern: str | None = None) -> list[str]:
    """Every hook name that fires on `model` (TL names, self-conditioning, encoder cache, attention
    patterns), naturally sorted. `pattern` is an optional glob, e.g. `"blocks.*.hook_resid_post"`.
    """
    names = sorted([*_probe(model, "full"), *_attention_names(model)], key=natural_key)
    return names if pattern is None else _matching(names, pattern)


def describe_names(model) -> str:
    """A printable table: name, shape for one forward at batch 2, notes (read-only, …)."""
    info = {**_attention_names(model), **_probe(model, "full")}
    rows = []
    for n in list_names(model):
        note = NOTES.get(n) or NOTES.get(n.rsplit(".", 1)[-1], "")  # per-layer names: by suffix
        if any(n.endswith(r) for r in READ_ONLY):
            note = "read-only (editing does not change the run)"
        rows.append(f"{n:<48} {str(list(info[n][0])):<18} {note}".rstrip())
    return "\n".join(rows)


def _n_layers(model) -> int:
    return model.config.get_text_config().num_hidden_layers


_GLOB = re.compile(r"[*?\[]")  # a pattern without these matches only itself


@functools.lru_cache(maxsize=256)
def _glob(pattern: str):
    return re.compile(fnmatch.translate(pattern)).match


def _matching(names, pattern: str) -> list[str]:
    """The names (in order) that glob `pattern` matches, case-sensitively (`fnmatch.fnmatchcase`)."""
    if not _GLOB.search(pattern):
        return [pattern] if pattern in names else []
    match = _glob(pattern)
    return [n for n in names if match(n)]


def resolve_names(model, names) -> list[str]:
    """Expand globs to concrete listed names (natural order, no duplicates); one-line errors otherwise."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    available = _probe(model, "full")  # attention-only names cost a second probe: only on demand
    out: list[str] = []
    for pat in names:
        m = re.match(r"blocks\.(\d+)\.", pat)
        if m and int(m.group(1)) >= _n_layers(model):
            raise HookNameError(
                f"layer {m.group(1)} in {pat!r} is out of range: the model has {_n_layers(model)} layers "
                f"(0..{_n_layers(model) - 1})"
            )
        hits = _matching(available, pat)
        if not hits and pat.endswith(ATTENTION_ONLY):
            if architecture_of(model) != DIFFUSION_ARCH:
                raise HookNameError(f"{pat!r}: attention patterns are recorded on DiffusionGemma only; on this model "
                                    "use TransformerLens directly: bridge_for(model, 'attention').bridge.run_with_cache")
            hits = _matching(list(_attention_names(model)), pat)
        if not hits:
            close = difflib.get_close_matches(pat, available, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise HookNameError(
                f"unknown hook name {pat!r}; {hint}print(dgt_interp.describe_names(model)) lists all names"
            )
        out.extend(h for h in hits if h not in out)
    return out


def level_for(model, names) -> str:
    """The cheapest bridge level at which every name in `names` fires ("attention" = eager attention,
    for attention patterns on DiffusionGemma)."""
    for level in LEVELS:
        if level == "attention" and architecture_of(model) != DIFFUSION_ARCH:
            break
        if all(n in _probe(model, level) for n in names):
            return level
    return "full"


def name_info(model, name: str, level: str) -> tuple[tuple[int, ...], str | None]:
    """(shape at batch 2, layout: "bp" | "flat" | None) of a resolved name."""
    return _probe(model, level)[name]


__all__ = ["HookNameError", "list_names", "describe_names", "resolve_names", "level_for", "name_info", "natural_key"]
