"""Memory planning for patched runs: how many patched copies one `generate` may carry, decided before running.

A *patched copy* is one corrupted run of the experiment's `[batch, pos]` prompts (B rows) with its
sites applied. At DiffusionGemma's released shapes (vocabulary 262,144, canvas 256) one row's
`[canvas, vocab]` float32 logits are 268 MB, and a decoder step holds several such tensors at once
(raw logits, processed logits, the sampler's probabilities and its noise division, the entropy
the sampler sorts by, the self-conditioning softmax of the previous step's logits), so what a copy
costs is dominated by the vocabulary, not by the activations. `estimate_patching_bytes` adds up,
per copy:

- `step working set`: `STEP_WORKING_LOGITS` `[B, canvas, vocab]` float32 tensors (measured on the
  real vocabulary, `bench/patch_memory.py`), the peak inside one denoising step;
- `kept logits + records`: what the run keeps (`capturing.plan_capture` of its `record=`): the
  final output logits per canvas (`record=("final_logits",)`, what a metric reads; independent of
  the step count), or every step's logits for a metric read at a step, plus the per-step canvases;
- `patched activations`: each patched hook's tensor, cloned when the patch is written;
- `forward + KV cache`: the decoder's hidden states and the encoder KV cache of B rows.

`plan_patching` turns the estimate into a chunk size: `copies = min(batch_size, max_bytes // per
copy)` patched copies per `generate` (an explicit `batch_size` still caps it), and refuses with a
one-line `CaptureBudgetError` naming the estimate and how to cut it when not even one copy fits.
The budget `max_bytes` bounds what one chunk adds on top of what is already held (the model, the
clean and corrupted runs, the clean activations patches read); its default is `MEMORY_FRACTION`
of the memory available when the plan is made (a CUDA model: its GPU's free memory; else
`psutil.virtual_memory().available`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import psutil
import torch

from dgt_interp.backends.devices import execution_device
from dgt_interp.capturing import CaptureBudgetError, fmt_bytes, plan_capture
from dgt_interp.patching.sites import PatchingError

MEMORY_FRACTION = 0.5  # default budget: this fraction of the memory available (GPU or RAM) when a plan is made
# `[rows, canvas, vocab]` float32 tensors alive at once at the peak of a denoising step (logits,
# processed logits, probabilities, the noise division, the entropy's log-probabilities and
# probabilities, the previous step's self-conditioning logits and softmax, the recorder's copy):
# measured 9.0 per row on the real vocabulary (10.0 before the sampler answered HF's draw from the replayed
# noise and computed the entropy once), kept output included (`bench/patch_memory.py
# --working-set`: peak RSS of 4 rows minus 1 row, over 3); the kept logits are counted apart.
STEP_WORKING_LOGITS = 9


def default_max_bytes(device=None) -> int:
    """`MEMORY_FRACTION` of the memory available now where the work runs: a CUDA device's free memory
    (`torch.cuda.mem_get_info`), else the RAM available (`psutil.virtual_memory().available`)."""
    if device is not None and torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * MEMORY_FRACTION)
    return int(psutil.virtual_memory().available * MEMORY_FRACTION)


def check_max_bytes(max_bytes, device=None) -> int:
    """`max_bytes` as given (an int >= 0), or the default budget on `device` for None; one-line error otherwise."""
    if max_bytes is None:
        return default_max_bytes(device)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise PatchingError(f"max_bytes={max_bytes!r} must be an int >= 0 (bytes of memory) or None (= "
                            f"{MEMORY_FRACTION:.0%} of the memory available: the GPU's for a CUDA model, else RAM)")
    return max_bytes


@dataclass
class Estimate:
    """A memory estimate, part by part (bytes); `describe()` is what refusals quote."""

    what: str  # e.g. "per patched copy"
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.parts.items())
        return f"~{fmt_bytes(self.total)} {self.what} ({parts})"


@dataclass
class PatchPlan:
    """How patched runs will be chunked: `copies` per `generate`, each estimated at `per_copy` bytes."""

    copies: int  # patched copies per generate (the chunk)
    n_patches: int
    estimate: Estimate  # one patched copy
    max_bytes: int = 0
    batch_size: int | None = None

    @property
    def per_copy(self) -> int:
        """Bytes one patched copy holds at its peak (the sum of `parts`)."""
        return self.estimate.total

    @property
    def parts(self) -> dict[str, int]:
        return self.estimate.parts

    @property
    def chunk_bytes(self) -> int:
        """Estimated peak of one chunk (`copies` patched copies)."""
        return self.copies * self.per_copy

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_patches / self.copies) if self.copies else 0

    def describe(self) -> str:
        return self.estimate.describe()

    def __str__(self) -> str:
        return (f"{self.n_patches} patched runs in {self.n_chunks} chunks of <= {self.copies} copies: "
                f"{self.describe()}; chunk ~{fmt_bytes(self.chunk_bytes)} of max_bytes={fmt_bytes(self.max_bytes)}")


def metric_record(metric, record=None) -> tuple[tuple[str, ...], slice | None]:
    """(`record=`, `steps=`) a patched run keeps: `record` when given (a name or names), else what `metric`
    reads: the final output logits (read at the end), the logits of steps 0..s (read after step s), or
    nothing (no metric: tokens only)."""
    if record is not None:
        return ((record,) if isinstance(record, str) else tuple(record)), None
    if metric is None:
        return (), None
    step = getattr(metric, "step", None)
    if step is None:
        return ("final_logits",), None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise PatchingError(f"metric step={step!r} must be an int >= 0 (an execution step) or None (final output)")
    return ("logits",), slice(0, step + 1)


def kv_width(text) -> int:
    """Key (or value) values cached per position, summed over layers: KV heads x head dim of each layer,
    read per layer where the config is heterogeneous (the released 26B-A4B: full-attention layers have
    2 KV heads of 512, sliding ones 8 of 256, and transformers refuses a global `head_dim` there)."""
    per_layer = getattr(text, "per_layer_config", None)
    layers = per_layer if per_layer else [text] * text.num_hidden_layers
    return sum(int(c.num_key_value_heads) * int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
               for c in layers)


def estimate_patching_bytes(p, *, record=("final_logits",), steps=None, hooked=()) -> Estimate:
    """The bytes one patched copy of `p`'s corrupted prompts holds at its peak, part by part.

    `record`/`steps`: what the run keeps (`metric_record(metric)`); `hooked`: the hook names the
    patches write (their tensors are cloned).
    """
    model, ids = p.model, p.ids["corrupted"]
    text = model.config.get_text_config()
    rows = ids.shape[0]
    cap = plan_capture(model, ids, names=list(hooked), record=record, steps=steps, **p.generation_kwargs)
    vocab, canvas = int(text.vocab_size), cap.canvas_length
    positions = ids.shape[1] + cap.n_canvases * canvas
    float_size = torch.empty((), dtype=model.dtype).element_size()
    kv = 2 * rows * positions * kv_width(text) * float_size
    widths = 4 * text.hidden_size + int(getattr(text, "intermediate_size", 0) or 0) + \
        int(getattr(text, "moe_intermediate_size", 0) or 0) * int(getattr(text, "top_k_experts", 1) or 1)
    forward = rows * positions * widths * float_size
    parts = {
        "step working set": STEP_WORKING_LOGITS * rows * canvas * vocab * 4,
        "kept logits + records": cap.record_bytes + sum(v for k, v in cap.bytes_per_name.items()
                                                        if k in record) * len(cap.steps),
        "patched activations": 2 * max((v for k, v in cap.bytes_per_name.items() if k not in record), default=0),
        "forward + KV cache": kv + forward,
    }
    return Estimate("per patched copy", parts)


def plan_patching(p, n_patches: int, *, metric=None, record=None, hooked=(), max_bytes: int | None = None,
                  batch_size: int | None = 64, what: str = "patched run") -> PatchPlan:
    """Chunk `n_patches` patched runs of `p` to `max_bytes` (None: `default_max_bytes` on the model's device),
    capped by `batch_size`.

    Raises `CaptureBudgetError` (one line: the estimate and how to cut it) when one copy does not fit.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise PatchingError(f"batch_size must be an int >= 1 or None (the memory budget decides), got {batch_size!r}")
    budget = check_max_bytes(max_bytes, execution_device(p.model))
    rec, steps = metric_record(metric, record)
    one = estimate_patching_bytes(p, record=rec, steps=steps, hooked=hooked)
    if one.total > budget:
        raise CaptureBudgetError(
            f"one {what} would hold {one.describe()} > max_bytes={fmt_bytes(budget)}; cut it with fewer "
            "positions or steps per patch, a smaller prompt batch, a bfloat16 model, a metric read at the end "
            "(step=None), or a larger max_bytes")
    copies = max(1, min(budget // one.total, batch_size or n_patches, max(1, n_patches)))
    return PatchPlan(copies=int(copies), n_patches=n_patches, estimate=one, max_bytes=budget, batch_size=batch_size)


__all__ = ["MEMORY_FRACTION", "STEP_WORKING_LOGITS", "Estimate", "PatchPlan", "default_max_bytes", "estimate_patching_bytes",
           "plan_patching", "metric_record", "check_max_bytes"]
