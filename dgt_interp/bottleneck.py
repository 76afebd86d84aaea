"""Interpretable token bottleneck on the self-conditioning channel.

Between denoising steps DiffusionGemma passes the previous step's processed logits (a full
distribution per canvas position) into the decoder's self-conditioning module: a continuous,
opaque channel. A *bottleneck* replaces that distribution by one a person can read as tokens:

- `TopK(k)`  (f_k): keep the top-k probabilities, spread the remaining mass uniformly over the
  other V - k tokens;
- `TopP(p)`  (f_p): keep every token with probability above `p` (always the argmax), spread the
  rest uniformly over the others;
- `OneHot()`: all mass on the argmax;
- `Zero()`:  no channel at all (the signal the module adds is zeroed, as at a canvas's first step);
- any callable `logits [batch, pos, vocab] -> logits`.

Sampling inside a step is unchanged: the bottleneck only edits what step s+1 *reads*. Each variant
is applied as a TransformerLens hook on `self_cond.hook_logits_in` (`Zero` on
`self_cond.hook_signal`), so it works inside `capture`, patching and `generate` alike.

Memory: the hook maps the `[batch, pos, vocab]` logits in chunks of at most `CHUNK_ELEMENTS` logits
(`Bottleneck.apply`), so at a 262,144-token vocabulary it holds its output and one chunk's
temporaries, not several full-vocabulary copies of the canvas (each position is mapped on its own,
so the result is the same bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dgt_interp.errors import DgtInterpError
from dgt_interp.evaluate import evaluate, task_tokenizer
from dgt_interp.models import is_diffusion
from dgt_interp.sampling import SAMPLERS, sampler_settings
from dgt_interp.tokenizer import require_chat_template

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
CHUNK_ELEMENTS = 2**24  # logits mapped at once by `Bottleneck.apply` (64 MiB of float32)


class BottleneckError(DgtInterpError, ValueError, TypeError):
    """Bad bottleneck input (one-line message that says what to do)."""

LOGITS_HOOK = "self_cond.hook_logits_in"
SIGNAL_HOOK = "self_cond.hook_signal"


def _log_spread(probs_kept: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """log of: kept probabilities where `keep`, the leftover mass spread uniformly elsewhere."""
    vocab = probs_kept.shape[-1]
    kept = torch.where(keep, probs_kept, torch.zeros_like(probs_kept))
    leftover = (1.0 - kept.sum(-1, keepdim=True)).clamp_min(0.0)
    n_other = (vocab - keep.sum(-1, keepdim=True)).clamp_min(1)
    out = torch.where(keep, kept, leftover / n_other)
    return torch.log(out)


@dataclass(frozen=True)
class Bottleneck:
    """Base class: a map from self-conditioning logits to interpretable logits."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:  # [batch, pos, vocab] -> same
        raise NotImplementedError

    def apply(self, logits: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
        """`self(logits)` in `logits.dtype`, computed over chunks of positions of at most `chunk_elements`
        logits (one output tensor plus one chunk's temporaries)."""
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        out = torch.empty_like(flat)
        rows = max(1, chunk_elements // vocab)
        for r0 in range(0, flat.shape[0], rows):
            out[r0:r0 + rows] = self(flat[r0:r0 + rows]).to(logits.dtype)
        return out.view(logits.shape)

    def hooks(self) -> list[tuple[str, Callable]]:
        """TL-style `(hook_name, fn)` pairs that apply this bottleneck at every step."""
        def fn(logits, hook):
            return self.apply(logits)

        return [(LOGITS_HOOK, fn)]


@dataclass(frozen=True)
class TopK(Bottleneck):
    k: int = 1

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise BottleneckError(f"TopK needs an integer k >= 1, got {self.k!r}")

    @property
    def name(self) -> str:
        return f"top-{self.k}"

    def __call__(self, logits):
        probs = logits.float().softmax(-1)
        k = min(self.k, probs.shape[-1])
        idx = probs.topk(k, dim=-1).indices
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, idx, True)
        return _log_spread(probs, keep)


@dataclass(frozen=True)
class TopP(Bottleneck):
    p: float = 0.1

    def __post_init__(self):
        if not 0.0 <= self.p < 1.0:
            raise BottleneckError(f"TopP needs a threshold 0 <= p < 1, got {self.p!r}")

    @property
    def name(self) -> str:
        return f"top-p>{self.p:g}"

    def __call__(self, logits):
        probs = logits.float().softmax(-1)
        keep = probs > self.p
        keep.scatter_(-1, probs.argmax(-1, keepdim=True), True)
        return _log_spread(probs, keep)


@dataclass(frozen=True)
class OneHot(Bottleneck):
    @property
    def name(self) -> str:
        return "one-hot"

    def __call__(self, logits):
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.argmax(-1, keepdim=True), True)
        return torch.where(keep, 0.0, float("-inf")).to(torch.float32)


@dataclass(frozen=True)
class Zero(Bottleneck):
    """No channel: the self-conditioning signal is zeroed (what `self_conditioning_mask=False` does)."""

    @property
    def name(self) -> str:
        return "zeroed"

    def __call__(self, logits):
        raise BottleneckError("Zero acts on the self-conditioning signal, not on logits; use .hooks()")

    def hooks(self):
        return [(SIGNAL_HOOK, lambda signal, hook: torch.zeros_like(signal))]


@dataclass(frozen=True)
class Custom(Bottleneck):
    """Wrap any `logits -> logits` callable (same shape) as a bottleneck."""

    fn: LogitsFn = None
    label: str = "custom"

    @property
    def name(self) -> str:
        return self.label

    def apply(self, logits, chunk_elements: int = CHUNK_ELEMENTS):
        """The whole `[batch, pos, vocab]` tensor at once (a custom map may mix positions)."""
        return self(logits).to(logits.dtype)

    def __call__(self, logits):
        out = self.fn(logits)
        if not isinstance(out, torch.Tensor) or out.shape != logits.shape:
            raise BottleneckError(
                f"bottleneck {self.label!r} must return a tensor of shape {tuple(logits.shape)}; "
                f"got {getattr(out, 'shape', type(out).__name__)}"
            )
        return out


def as_bottleneck(spec: "Bottleneck | LogitsFn | str | None") -> Bottleneck | None:
    """Parse `None`/"none", "top-3", "top-p=0.1", "one-hot", "zero", a `Bottleneck` or a callable."""
    if spec is None or isinstance(spec, Bottleneck):
        return spec
    if callable(spec):
        return Custom(fn=spec, label=getattr(spec, "__name__", "custom"))
    s = str(spec).strip().lower()
    if s in ("none", "full", "identity"):
        return None
    if s in ("one-hot", "onehot", "top-1-onehot"):
        return OneHot()
    if s in ("zero", "zeroed", "off"):
        return Zero()
    if s.startswith("top-p"):
        return TopP(float(s.split("=", 1)[-1].lstrip(">")) if "=" in s or ">" in s else 0.1)
    if s.startswith("top-") and s[4:].isdigit():
        return TopK(int(s[4:]))
    raise BottleneckError(f"unknown bottleneck {spec!r}; use none, top-K (e.g. top-1), top-p=P, one-hot or zero")


# ----------------------------------------------------------------------------- evaluation

VARIANTS = ("none", "top-1", "top-2", "top-p=0.1", "one-hot", "zero")


@dataclass
class BottleneckRow:
    variant: str
    sampler: str
    accuracy: float
    ci95: tuple[float, float]
    mean_steps: float
    degenerate_rate: float
    n: int


def bottleneck_table(model, task, *, variants=VARIANTS, samplers=SAMPLERS, n: int = 1000, seed: int = 0,
                     batch_size: int = 250, progress: bool = False, tokenizer=None, chat: bool = False
                     ) -> list[BottleneckRow]:
    """Exact match, mean denoising steps and degenerate-output rate per (bottleneck, sampler).

    Every cell generates the same `n` held-out problems with the same seeds, so rows differ only by
    the bottleneck and the sampler. `variants` entries are anything `as_bottleneck` accepts. Prompts
    go through the model's own tokenizer (`evaluate.task_tokenizer`; `chat=True`: its chat template).
    """
    if not is_diffusion(model):
        raise BottleneckError(f"the token bottleneck acts on DiffusionGemma's self-conditioning; got {type(model).__name__}")
    problems = task.problems("test", n, seed=seed)
    rows = []
    settings = {name: sampler_settings(name) for name in samplers}  # every bad name refused before any run
    bottlenecks = [as_bottleneck(spec) for spec in variants]
    tok = task_tokenizer(model, tokenizer)
    if chat:
        require_chat_template(tok)  # the one-line error before any run
    for sampler, kwargs in settings.items():
        for b in bottlenecks:
            res = evaluate(model, task, problems=problems, seed=seed, batch_size=batch_size,
                           fwd_hooks=b.hooks() if b is not None else (), progress=progress, tokenizer=tok, chat=chat,
                           **kwargs)
            rows.append(BottleneckRow(b.name if b is not None else "none (continuous)", sampler, res.accuracy,
                                      res.ci95, res.mean_decoder_passes, res.degenerate / res.n, res.n))
    return rows


def format_table(rows: list[BottleneckRow]) -> str:
    """A markdown table of `bottleneck_table` rows."""
    lines = ["| sampler | self-conditioning channel | exact match | 95% CI | mean steps | degenerate |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.sampler} | {r.variant} | {r.accuracy:.1%} | {r.ci95[0]:.1%}–{r.ci95[1]:.1%} "
                     f"| {r.mean_steps:.2f} | {r.degenerate_rate:.1%} |")
    return "\n".join(lines)
