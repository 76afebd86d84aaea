"""The concrete tasks. Each is chosen because we know the algorithm that solves it."""

from __future__ import annotations

import itertools
import random
from functools import lru_cache

from .base import Problem, Task, TaskError


def _addition(rng: random.Random) -> Problem:
    a, b = rng.randint(0, 9999), rng.randint(0, 9999)
    return Problem(prompt=f"{a}+{b}=", answer=str(a + b))


def _addition_train(rng: random.Random) -> Problem:
    """Half uniform values, half uniform digit counts (1-4 per operand): uniform values are 90%
    4-digit, so operands of unequal length (where digits must be aligned) would be rare."""
    if rng.random() < 0.5:
        return _addition(rng)
    a, b = (rng.randint(0 if n == 1 else 10 ** (n - 1), 10**n - 1) for n in (rng.randint(1, 4), rng.randint(1, 4)))
    return Problem(prompt=f"{a}+{b}=", answer=str(a + b))


def _addition_unequal(rng: random.Random) -> Problem:
    """Half uniform values, half one 4-digit operand with a 2- or 3-digit one (either order): the
    cases where digits must be aligned across operands of different length."""
    if rng.random() < 0.5:
        return _addition(rng)
    long, short = rng.randint(1000, 9999), rng.randint(10, 999)
    a, b = (long, short) if rng.random() < 0.5 else (short, long)
    return Problem(prompt=f"{a}+{b}=", answer=str(a + b))


def _addition_lengths(rng: random.Random) -> Problem:
    """A quarter uniform values, three quarters uniform digit counts (1-4 per operand): every
    pairing of operand lengths, including a short second operand, is common."""
    if rng.random() < 0.25:
        return _addition(rng)
    a, b = (rng.randint(0 if n == 1 else 10 ** (n - 1), 10**n - 1) for n in (rng.randint(1, 4), rng.randint(1, 4)))
    return Problem(prompt=f"{a}+{b}=", answer=str(a + b))


ADDITION = Task(
    name="addition",
    description="a+b= with a, b uniform in [0, 9999]; answer most-significant digit first, then EOS",
    sample=_addition,
    train_sample=_addition_train,
    train_mixes={"unequal": _addition_unequal, "lengths": _addition_lengths},
    max_prompt_chars=len("9999+9999="),
    max_answer_chars=len("19998"),
)

SORT_MIN_LEN, SORT_MAX_LEN = 2, 7


def _sort(rng: random.Random) -> Problem:
    n = rng.randint(SORT_MIN_LEN, SORT_MAX_LEN)
    digits = [rng.randint(0, 9) for _ in range(n)]
    return Problem(prompt="".join(map(str, digits)) + ">", answer="".join(map(str, sorted(digits))))


SORT = Task(
    name="sort",
    description=f"sort {SORT_MIN_LEN}-{SORT_MAX_LEN} digits ascending: '3142>' -> '1234'; output length varies",
    sample=_sort,
    max_prompt_chars=SORT_MAX_LEN + 1,
    max_answer_chars=SORT_MAX_LEN,
)

COUNT_MIN_LEN, COUNT_MAX_LEN = 3, 8


def _count(rng: random.Random) -> Problem:
    n = rng.randint(COUNT_MIN_LEN, COUNT_MAX_LEN)
    digits = [rng.randint(0, 9) for _ in range(n)]
    lo = rng.randint(0, 9)
    hi = rng.randint(lo, 9)
    inside = [d for d in digits if lo <= d <= hi]
    return Problem(prompt="".join(map(str, digits)) + f"[{lo}-{hi}]?",
                   answer=f"{len(inside)}:" + "".join(map(str, inside)))


COUNT = Task(
    name="count",
    description=(f"how many of {COUNT_MIN_LEN}-{COUNT_MAX_LEN} digits lie in [lo, hi], count first, then the list in "
                 "input order: '7291538[3-7]?' -> '3:753'"),
    sample=_count,
    max_prompt_chars=COUNT_MAX_LEN + len("[0-9]?"),
    max_answer_chars=2 + COUNT_MAX_LEN,
)

SUDOKU_MIN_BLANKS, SUDOKU_MAX_BLANKS = 4, 10


@lru_cache(maxsize=1)
def sudoku_grids() -> tuple[str, ...]:
    """All 288 solved 4x4 sudokus (rows, columns and 2x2 boxes hold 1-4 once), row-major strings."""
    out = []
    for cells in itertools.product(itertools.permutations("1234"), repeat=4):
        rows = ["".join(r) for r in cells]
        cols_ok = all(len({r[c] for r in rows}) == 4 for c in range(4))
        boxes_ok = all(len({rows[r + i][c + j] for i in (0, 1) for j in (0, 1)}) == 4 for r in (0, 2) for c in (0, 2))
        if cols_ok and boxes_ok:
            out.append("".join(rows))
    return tuple(out)


def sudoku_solutions(puzzle: str) -> list[str]:
    """Every solved grid consistent with `puzzle` (16 cells, `#` = blank)."""
    return [g for g in sudoku_grids() if all(p in ("#", c) for p, c in zip(puzzle, g))]


def _sudoku(rng: random.Random) -> Problem:
    """A uniformly drawn solved grid with 4-10 cells blanked, redrawn until the solution is unique."""
    while True:
        grid = rng.choice(sudoku_grids())
        blanks = set(rng.sample(range(16), rng.randint(SUDOKU_MIN_BLANKS, SUDOKU_MAX_BLANKS)))
        puzzle = "".join("#" if i in blanks else c for i, c in enumerate(grid))
        if len(sudoku_solutions(puzzle)) == 1:
            return Problem(prompt=puzzle + "?", answer=grid)


SUDOKU = Task(
    name="sudoku",
    description=("complete a 4x4 sudoku (rows, columns, 2x2 boxes hold 1-4), row-major, # = blank, unique "
                 "solution: '1#34#4#2##1#4#2#?' -> '1234341221434321'"),
    sample=_sudoku,
    max_prompt_chars=17,
    max_answer_chars=16,
)

TASKS: dict[str, Task] = {t.name: t for t in (ADDITION, SORT, COUNT, SUDOKU)}


def get_task(name: str) -> Task:
    """Look up a task by name, with a one-line error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}") from None
