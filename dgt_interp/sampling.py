"""Sampler settings and replayed sampler noise for DiffusionGemma's entropy-bound sampler.

Presets. `sampler_settings("default" | "gentle")` and `entropy_bound_kwargs(bound, ...)` give
`generate` kwargs (the same kwargs `capture`, `evaluate`, patching and the studies take).

Replayed noise. A diffusion run draws random numbers at every step: the initial canvas, the sample
of each position (`torch.multinomial`) and the re-noising tokens. `ReplayedNoise(seed)` is that
randomness as an object: pass it as `capture(..., noise=ReplayedNoise(seed))` and the sampler takes
its draws from it instead of torch's global RNG. Every row of a batch gets the same draws, so K
copies of one prompt along the batch axis give K identical runs (what batched patching needs), and
two runs (clean, corrupted, patched) that share a `ReplayedNoise` differ only by their inputs. For
canvas 0 the draws are exactly those HF's batch-1 `generate` makes after `torch.manual_seed(seed)`,
so a batch-1 capture with `noise=ReplayedNoise(seed)` equals `capture(..., seed=seed)`; canvas c
starts where canvas c-1 would have ended after all `max_denoising_steps` steps.

Memory is O(1) in the number of steps: the stream is a seeded `torch.Generator`; only its state
(a few KB) is kept per (canvas, step), and each step's `[L, V]` exponential noise is regenerated
from it when the sampler needs it (one such tensor exists at a time).
"""

from __future__ import annotations

import torch
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

from dgt_interp.errors import DgtInterpError

SAMPLERS = ("default", "gentle")
PRESETS = {
    "default": dict(entropy_bound=0.1, max_denoising_steps=48, t_max=0.8, t_min=0.4),
    "gentle": dict(entropy_bound=0.02, max_denoising_steps=96, t_max=1.0, t_min=0.5),
}


class SamplingError(DgtInterpError, ValueError):
    """Bad sampler settings or noise use (one-line message that says what to do)."""


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each position's next-token distribution: `[..., vocab]` logits -> `[...]`.

    Bit for bit `torch.distributions.Categorical(logits=logits).entropy()`, what HF's
    `EntropyBoundSampler` ranks positions by, without building the distribution (its argument
    validation is an extra pass over the logits and a device sync at every step)."""
    logp = logits - logits.logsumexp(dim=-1, keepdim=True)
    return -(torch.clamp(logp, min=torch.finfo(logp.dtype).min) * torch.softmax(logp, dim=-1)).sum(-1)


def entropy_bound_kwargs(entropy_bound: float, **generation_kwargs) -> dict:
    """`generate` kwargs for DiffusionGemma's entropy-bound sampler with bound `entropy_bound` (smaller =
    fewer tokens accepted per step = more steps), plus any other `generate` kwargs given."""
    return dict(sampler_config=EntropyBoundSamplerConfig(entropy_bound=float(entropy_bound)), **generation_kwargs)


def sampler_settings(name: str) -> dict:
    """`generate` kwargs of a named sampler setting.

    - "default": DiffusionGemma's defaults (entropy bound 0.1, up to 48 steps, temperature 0.8 -> 0.4);
    - "gentle": the setting under which public follow-up work found top-1 harmless on GPQA
      (entropy bound 0.02, up to 96 steps, temperature 1.0 -> 0.5).
    """
    if name not in PRESETS:
        raise SamplingError(f"unknown sampler setting {name!r}; choose one of: {', '.join(PRESETS)}")
    return entropy_bound_kwargs(**PRESETS[name])


class ReplayedNoise:
    """The sampler's random draws per (canvas, step), from a generator seeded with `seed`.

    Bound to a shape (vocabulary, canvas length, max steps, device) by the first run that uses it;
    a later run with another shape is refused. Draws for canvas c, in HF's batch-1 order:
    `initial_canvas(c)` `[1, L]`, then per step k `exponential(c, k)` `[L, V]` (the noise
    `torch.multinomial` divides the probabilities by) and `renoise(c, k)` `[1, L]`.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.shape: tuple[int, int, int, str] | None = None
        self._gen: torch.Generator | None = None
        self._states: dict[tuple[int, int], torch.Tensor] = {}  # (c, k) -> state before step k; k = -1: before init
        self._last: tuple[tuple[int, int], torch.Tensor, torch.Tensor] | None = None

    def bind(self, vocab: int, canvas_length: int, max_steps: int, device) -> "ReplayedNoise":
        shape = (int(vocab), int(canvas_length), int(max_steps), str(torch.device(device)))
        if self.shape is None:
            self.shape = shape
            self._gen = torch.Generator(device=torch.device(device)).manual_seed(self.seed)
            self._states[(0, -1)] = self._gen.get_state()
        elif self.shape != shape:
            raise SamplingError(f"this ReplayedNoise was drawn for (vocab, canvas, max steps, device) = {self.shape}, "
                                f"not {shape}; use a new ReplayedNoise(seed) for other settings")
        return self

    def _device(self) -> torch.device:
        return torch.device(self.shape[3])

    def _state(self, c: int, k: int) -> torch.Tensor:
        """Generator state before draw (c, k), advancing from the latest known state (nothing kept but states)."""
        if (c, k) not in self._states:
            prev = (c, k - 1) if k > -1 else (c - 1, self.shape[2] - 1)
            self._state(*prev)
            if prev[1] == -1:
                self._draw_init(prev[0])
            else:
                self._draw_step(*prev)
        return self._states[(c, k)]

    def _next(self, c: int, k: int) -> tuple[int, int]:
        return (c, k + 1) if k + 1 < self.shape[2] else (c + 1, -1)

    def _draw_init(self, c: int) -> torch.Tensor:
        v, n, _, _ = self.shape
        self._gen.set_state(self._state(c, -1))
        init = torch.randint(0, v, (1, n), generator=self._gen, device=self._device())
        self._states.setdefault((c, 0), self._gen.get_state())
        return init

    def _draw_step(self, c: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._last is not None and self._last[0] == (c, k):
            return self._last[1], self._last[2]
        v, n, _, _ = self.shape
        self._gen.set_state(self._state(c, k))
        exp = torch.empty((n, v), dtype=torch.float32, device=self._device()).exponential_(generator=self._gen)
        ren = torch.randint(0, v, (1, n), generator=self._gen, device=self._device())
        self._states.setdefault(self._next(c, k), self._gen.get_state())
        self._last = ((c, k), exp, ren)
        return exp, ren

    def initial_canvas(self, c: int) -> torch.Tensor:
        """`[1, L]` the uniform random tokens canvas c starts from."""
        return self._draw_init(c)

    def exponential(self, c: int, k: int) -> torch.Tensor:
        """`[L, V]` the exponential noise of canvas c, step k: the sample is `argmax(probs / noise)`."""
        return self._draw_step(c, k)[0]

    def renoise(self, c: int, k: int) -> torch.Tensor:
        """`[1, L]` the tokens non-accepted positions are re-noised to after canvas c, step k."""
        return self._draw_step(c, k)[1]

    def __repr__(self) -> str:
        return f"ReplayedNoise(seed={self.seed})"


__all__ = ["SAMPLERS", "PRESETS", "SamplingError", "entropy_bound_kwargs", "token_entropy", "sampler_settings", "ReplayedNoise"]
