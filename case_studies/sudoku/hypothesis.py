"""The sudoku study's algorithm as code: constraint propagation by singles, and the order it implies.

Puzzles (`dgt_interp.tasks.SUDOKU`): a 4x4 sudoku (rows, columns and 2x2 boxes hold 1-4 once), 16
cells row-major, `#` = blank, exactly one solution. The answer is the whole grid, so canvas position
i is cell i (then EOS at 16).

Constraint propagation, the algorithm a parallel solver runs: in round r every blank cell that the
cells filled so far force is filled at once, by the two standard rules

    naked single:  one digit only is missing from the cell's row, column and box together;
    hidden single: a digit has only this cell left in one of the cell's units.

`propagation_rounds(puzzle)` gives each cell its round (0 = given, None = never forced: the puzzle
would need search). A model that reasons this way fills round-1 cells before round-2 cells,
wherever they sit: a non-chronological order predicted cell by cell, which the study compares with
the order in which DiffusionGemma commits its canvas.
"""

from __future__ import annotations

import random

from dgt_interp.tasks import SUDOKU, Problem

ROWS = [[4 * r + c for c in range(4)] for r in range(4)]
COLS = [[4 * r + c for r in range(4)] for c in range(4)]
BOXES = [[4 * (br + i) + bc + j for i in (0, 1) for j in (0, 1)] for br in (0, 2) for bc in (0, 2)]
UNITS = ROWS + COLS + BOXES
PEERS = [sorted({j for u in UNITS if i in u for j in u} - {i}) for i in range(16)]
EOS_POSITION = 16


def candidates(grid: list[str], i: int) -> set[str]:
    """Digits cell i can still take: those not already placed in its row, column or box."""
    return set("1234") - {grid[j] for j in PEERS[i]}


def forced_cells(grid: list[str]) -> dict[int, str]:
    """Blank cells the filled ones force, by naked and hidden singles (cell -> digit)."""
    forced = {}
    for i in range(16):
        if grid[i] == "#":
            c = candidates(grid, i)
            if len(c) == 1:
                forced[i] = c.pop()
    for unit in UNITS:
        for d in "1234":
            if d in (grid[i] for i in unit):
                continue
            spots = [i for i in unit if grid[i] == "#" and d in candidates(grid, i)]
            if len(spots) == 1:
                forced.setdefault(spots[0], d)
    return forced


def propagation_rounds(puzzle: str) -> list[int | None]:
    """Round at which each of the 16 cells is filled by propagation (0 = given, None = never forced)."""
    grid = list(puzzle[:16])
    rounds: list[int | None] = [0 if c != "#" else None for c in grid]
    r = 0
    while "#" in grid:
        forced = forced_cells(grid)
        if not forced:
            break
        r += 1
        for i, d in forced.items():
            grid[i], rounds[i] = d, r
    return rounds


def propagate(puzzle: str) -> str:
    """The grid propagation fills (`#` where it gets stuck)."""
    grid = list(puzzle[:16])
    while forced := forced_cells(grid):
        for i, d in forced.items():
            grid[i] = d
    return "".join(grid)


def sample_problem(rng: random.Random) -> Problem:
    """A held-out-distribution puzzle (the task's sampler)."""
    return SUDOKU.sample(rng)


__all__ = ["ROWS", "COLS", "BOXES", "UNITS", "PEERS", "EOS_POSITION", "candidates", "forced_cells",
           "propagation_rounds", "propagate", "sample_problem"]
