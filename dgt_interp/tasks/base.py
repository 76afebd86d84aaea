"""Task generators: deterministic problems, a train/test split, an exact checker.

A task is a set of (prompt, answer) string pairs whose algorithm we know. Which problems are
held out is a pure function of the prompt (a stable hash), so the split never depends on the seed
or on how many problems were drawn; the seed only decides which problems are drawn.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable, Literal

from dgt_interp.errors import DgtInterpError

Split = Literal["train", "test"]


class TaskError(DgtInterpError, ValueError):
    """Bad task input (one-line message that says what to do)."""


@dataclass(frozen=True)
class Problem:
    prompt: str  # e.g. "12+34="
    answer: str  # e.g. "46" (EOS is implied)


@dataclass(frozen=True)
class Task:
    """A named problem distribution with an exact checker.

    `sample(rng)` draws one problem from the task's distribution (what held-out problems follow);
    `train_sample(rng)`, if given, is the distribution training draws from (e.g. oversampling rare
    cases); `train_mixes` names alternative training distributions (`problems(..., mix=name)`).
    All are filtered by the split, which keeps every 1 in `test_every` prompts (by hash) for testing.
    """

    name: str
    description: str
    sample: Callable[[random.Random], Problem]
    max_prompt_chars: int
    max_answer_chars: int
    test_every: int = 20
    train_sample: Callable[[random.Random], Problem] | None = None
    train_mixes: dict[str, Callable[[random.Random], Problem]] = field(default_factory=dict)
    # What the split hashes (default: the whole prompt). A task whose prompts come in variants of
    # one problem (with and without a hint) hashes the problem, so no variant of a held-out
    # problem is ever trained on.
    split_key: Callable[[str], str] | None = None

    def train_sampler(self, mix: str | None = None) -> Callable[[random.Random], Problem]:
        """The training distribution: `mix` from `train_mixes`, else `train_sample`, else `sample`."""
        if mix is not None:
            if mix not in self.train_mixes:
                known = ", ".join(sorted(self.train_mixes)) or "(none)"
                raise TaskError(f"task {self.name!r} has no training mix {mix!r}; choose one of: {known}")
            return self.train_mixes[mix]
        return self.train_sample or self.sample

    def is_test(self, prompt: str) -> bool:
        key = self.split_key(prompt) if self.split_key else prompt
        digest = hashlib.sha256(f"{self.name}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % self.test_every == 0

    def problems(self, split: Split, n: int, seed: int = 0, mix: str | None = None) -> list[Problem]:
        """`n` problems of `split`, the same list for the same seed (duplicates allowed).

        `mix` picks a named training distribution (train split only)."""
        if split not in ("train", "test"):
            raise TaskError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"{self.name}:{split}:{seed}")
        want_test = split == "test"
        sample = self.train_sampler(mix) if split == "train" else self.sample
        out: list[Problem] = []
        while len(out) < n:
            p = sample(rng)
            if self.is_test(p.prompt) == want_test:
                out.append(p)
        return out

    def check(self, problem: Problem, output: str) -> bool:
        """Exact match of the decoded output (up to EOS) with the answer."""
        return output == problem.answer
