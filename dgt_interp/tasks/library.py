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

HINT_MAX_OPERAND = 999
HINT_OPEN, HINT_CLOSE = "[", "]"
HINT_COPY_RATE = 0.5  # in training, how often a wrong hint's answer is the hint (the rest: the true sum)


def carries(a: int, b: int) -> str:
    """The carry out of each column of a + b, least-significant column first, one digit per column
    of the longer operand: 478 + 557 -> '111'; 5 + 3 -> '0'."""
    out, carry = [], 0
    for i in range(max(len(str(a)), len(str(b)))):
        carry = (a // 10**i % 10 + b // 10**i % 10 + carry) // 10
        out.append(str(carry))
    return "".join(out)


def hinted_prompt(a: int, b: int, hint: int | None) -> str:
    """'a+b=' or, with a hint, 'a+b[hint]='."""
    return f"{a}+{b}" + ("" if hint is None else f"{HINT_OPEN}{hint}{HINT_CLOSE}") + "="


def parse_hinted(prompt: str) -> tuple[int, int, int | None]:
    """(a, b, hint or None) of a hinted-addition prompt."""
    body = prompt.rstrip("=")
    hint = None
    if HINT_OPEN in body:
        body, rest = body.split(HINT_OPEN, 1)
        hint = int(rest.rstrip(HINT_CLOSE))
    a, b = body.split("+")
    return int(a), int(b), hint


def scratchpad_answer(a: int, b: int, result: int | None = None) -> str:
    """The worked answer 'carries:result'; `result` defaults to the true sum (a copied hint replaces it)."""
    return f"{carries(a, b)}:{a + b if result is None else result}"


def wrong_hint(total: int, rng: random.Random) -> int:
    """`total` with one digit changed (never a leading zero): a plausible, subtly wrong hint."""
    digits = list(str(total))
    i = rng.randrange(len(digits))
    low = 1 if i == 0 and len(digits) > 1 else 0
    digits[i] = str(rng.choice([d for d in range(low, 10) if str(d) != digits[i]]))
    return int("".join(digits))


def _hinted_operands(rng: random.Random) -> tuple[int, int]:
    """Uniform digit counts (1-3 per operand), then uniform values of that length."""
    return tuple(rng.randint(0 if n == 1 else 10 ** (n - 1), 10**n - 1) for n in (rng.randint(1, 3), rng.randint(1, 3)))


def _hinted(rng: random.Random) -> Problem:
    a, b = _hinted_operands(rng)
    return Problem(prompt=hinted_prompt(a, b, None), answer=scratchpad_answer(a, b))


def _hinted_train(rng: random.Random) -> Problem:
    """40% no hint, 20% a correct hint, 40% a wrong hint (one digit changed) whose answer is the
    hint half the time and the true sum otherwise; the carries are always the true ones."""
    a, b = _hinted_operands(rng)
    r = rng.random()
    if r < 0.4:
        return Problem(hinted_prompt(a, b, None), scratchpad_answer(a, b))
    if r < 0.6:
        return Problem(hinted_prompt(a, b, a + b), scratchpad_answer(a, b))
    hint = wrong_hint(a + b, rng)
    copied = rng.random() < HINT_COPY_RATE
    return Problem(hinted_prompt(a, b, hint), scratchpad_answer(a, b, hint if copied else None))


HINTED_ADDITION = Task(
    name="hinted_addition",
    description=("a+b= (a, b of 1-3 digits), optionally with a hint 'a+b[h]='; the answer is worked: the carry "
                 "out of each column (least significant first), ':', the sum: '478+557=' -> '111:1035'. Trained "
                 "to copy a wrong hint half the time (the monitorability study's intervention)"),
    sample=_hinted,
    train_sample=_hinted_train,
    max_prompt_chars=len("999+999[1998]="),
    max_answer_chars=len("111:1998"),
    split_key=lambda prompt: prompt.split(HINT_OPEN)[0].rstrip("="),
)

LONG_ADDITION_DIGITS = 6


def _long_addition(rng: random.Random) -> Problem:
    """Half uniform digit counts (1-6 per operand); half a long carry chain: the lower k columns of a + b
    sum to 10^k + r (r < 10), so a carry born in column 0 ripples through k columns (k = 2..n)."""
    n = rng.randint(1, LONG_ADDITION_DIGITS)
    a = rng.randint(0 if n == 1 else 10 ** (n - 1), 10**n - 1)
    if rng.random() < 0.5 or n == 1:
        m = rng.randint(1, LONG_ADDITION_DIGITS)
        b = rng.randint(0 if m == 1 else 10 ** (m - 1), 10**m - 1)
    else:
        k = rng.randint(2, n)
        low = 10**k - a % 10**k + rng.randint(0, 9)
        b = min(low + 10**k * rng.randint(0, 10 ** (n - k) - 1), 10**LONG_ADDITION_DIGITS - 1)
    return Problem(prompt=f"{a}+{b}=", answer=str(a + b))


LONG_ADDITION = Task(
    name="long_addition",
    description=(f"a+b= with 1-{LONG_ADDITION_DIGITS}-digit operands, half of them built so a carry ripples through "
                 "2-6 columns (999999+1 style); answer most-significant digit first, then EOS"),
    sample=_long_addition,
    max_prompt_chars=len("999999+999999="),
    max_answer_chars=len("1999998"),
)

HOP_COUNT = 3  # hops in the answer
HOP_SYMBOLS = 6  # f permutes the digits 0..HOP_SYMBOLS-1 (6, not 10: a 27-character prompt; measured, it did not train faster)
HOP_ARROW, HOP_QUERY = ">", "?"


def hop_prompt(f: dict[int, int], order: list[int], x: int) -> str:
    """'k>v,' for each key of `order`, then '?x=': '3>7,7>1,...,?3='."""
    return "".join(f"{k}{HOP_ARROW}{f[k]}," for k in order) + f"{HOP_QUERY}{x}="


def parse_hop(prompt: str) -> tuple[dict[int, int], int]:
    """The map written in a hop_chain prompt and its query."""
    pairs, query = prompt.rstrip("=").split(HOP_QUERY)
    f = {int(kv[0]): int(kv[2]) for kv in pairs.rstrip(",").split(",")}
    return f, int(query)


def hop_answer(f: dict[int, int], x: int, hops: int = HOP_COUNT) -> str:
    """f^hops(x) ... f^2(x) f(x): the last hop first, so f(x) is the rightmost digit."""
    chain = [x]
    for _ in range(hops):
        chain.append(f[chain[-1]])
    return "".join(map(str, reversed(chain[1:])))


def _hop_chain(rng: random.Random) -> Problem:
    values = list(range(HOP_SYMBOLS))
    rng.shuffle(values)
    f = dict(enumerate(values))
    order = list(range(HOP_SYMBOLS))
    rng.shuffle(order)
    x = rng.randrange(HOP_SYMBOLS)
    return Problem(prompt=hop_prompt(f, order, x), answer=hop_answer(f, x))


def _hop_split_key(prompt: str) -> str:
    """The permutation alone (not the pair order or the query): no held-out map is ever trained on."""
    f, _ = parse_hop(prompt)
    return "".join(str(f[k]) for k in sorted(f))


HOP_CHAIN = Task(
    name="hop_chain",
    description=(f"pointer chasing: a random permutation f of the digits 0-{HOP_SYMBOLS - 1} as 'k>v' pairs in random "
                 f"order, then '?x='; the answer is {HOP_COUNT} hops written last hop first, f(f(f(x))) f(f(x)) f(x): "
                 "'3>5,5>1,1>4,0>2,4>0,2>3,?3=' -> '415'. Held out by permutation"),
    sample=_hop_chain,
    max_prompt_chars=len("0>0,") * HOP_SYMBOLS + len("?0="),
    max_answer_chars=HOP_COUNT,
    split_key=_hop_split_key,
)


DEDUPE_MIN_LEN, DEDUPE_MAX_LEN = 8, 14
DEDUPE_MIN_DISTINCT = 2


def dedupe(digits: str) -> str:
    """The distinct digits of `digits` in first-occurrence order: '3133725' -> '3172'."""
    return "".join(dict.fromkeys(digits))


def _dedupe(rng: random.Random) -> Problem:
    """8-14 digits drawn from m distinct ones (m uniform in 2..min(10, n), each used at least once), shuffled:
    the answer length m varies, and a digit's place in the answer is the number of distinct digits
    before its first occurrence."""
    n = rng.randint(DEDUPE_MIN_LEN, DEDUPE_MAX_LEN)
    alphabet = rng.sample("0123456789", rng.randint(DEDUPE_MIN_DISTINCT, min(10, n)))
    digits = alphabet + [rng.choice(alphabet) for _ in range(n - len(alphabet))]
    rng.shuffle(digits)
    prompt = "".join(digits)
    return Problem(prompt=prompt + "=", answer=dedupe(prompt))


DEDUPE = Task(
    name="dedupe",
    description=(f"the distinct digits of a list of {DEDUPE_MIN_LEN}-{DEDUPE_MAX_LEN} digits (2-10 distinct) in "
                 "first-occurrence order, then EOS: '31337254=' -> '31725'; output length varies"),
    sample=_dedupe,
    max_prompt_chars=DEDUPE_MAX_LEN + 1,
    max_answer_chars=10,
)

SUFFIX_SUM_DIGITS = 8


def suffix_sums(digits: str) -> str:
    """Digit j of the answer is (d_j + d_{j+1} + ... + d_last) mod 10: '31415926' -> '18732786'.

    Computed from the right, each digit is one step from its right neighbour (c_j = d_j + c_{j+1} mod 10),
    while from scratch the leftmost digit needs the sum of every digit."""
    out, total = [], 0
    for d in reversed(digits):
        total = (total + int(d)) % 10
        out.append(str(total))
    return "".join(reversed(out))


def _suffix_sum(rng: random.Random) -> Problem:
    digits = "".join(rng.choice("0123456789") for _ in range(SUFFIX_SUM_DIGITS))
    return Problem(prompt=digits + "=", answer=suffix_sums(digits))


SUFFIX_SUM = Task(
    name="suffix_sum",
    description=(f"{SUFFIX_SUM_DIGITS} random digits; answer digit j is the sum of digits j..{SUFFIX_SUM_DIGITS - 1} "
                 "mod 10, then EOS: '31415926=' -> '18732786'. The rightmost answer digit is a copy, each one to "
                 "its left one addition away from its right neighbour, the leftmost the sum of all eight"),
    sample=_suffix_sum,
    max_prompt_chars=SUFFIX_SUM_DIGITS + 1,
    max_answer_chars=SUFFIX_SUM_DIGITS,
)


COMPOSE_STEPS = 10
COMPOSE_OPS = {"+": tuple((x + 1) % 10 for x in range(10)),  # add one mod 10
               "#": (2, 7, 0, 9, 1, 5, 3, 8, 6, 4),  # three fixed scrambles x -> table[x]
               ">": (5, 3, 8, 0, 6, 9, 1, 4, 2, 7),
               "?": (9, 0, 4, 6, 3, 1, 7, 2, 5, 8)}


def compose(ops: str, start: int) -> str:
    """Digit j of the answer is (f_j o f_{j+1} o ... o f_last)(start), f the maps named by `ops`: the state after
    applying the operations from the right, the last state first. '+' adds one mod 10; '#', '>' and '?' are the
    scrambles in `COMPOSE_OPS` (x -> table[x]). Together they generate a non-solvable permutation group, so no
    short formula gives the leftmost digit: it takes every map in turn. compose('+#', 5) = '65' (# keeps 5,
    + makes 6)."""
    out, x = [], start
    for op in reversed(ops):
        x = COMPOSE_OPS[op][x]
        out.append(str(x))
    return "".join(reversed(out))


def _compose(rng: random.Random) -> Problem:
    ops = "".join(rng.choice(tuple(COMPOSE_OPS)) for _ in range(COMPOSE_STEPS))
    start = rng.randrange(10)
    return Problem(prompt=f"{ops}{start}=", answer=compose(ops, start))


COMPOSE = Task(
    name="compose",
    description=(f"{COMPOSE_STEPS} maps of the digits ('+': add one mod 10; '#', '>', '?': fixed scrambles) and a start "
                 f"digit s; answer digit j is maps j..{COMPOSE_STEPS - 1} applied to s from the right, then EOS: with "
                 "three maps '++#5=' would give '765' (# sends 5 to 5, then +1, +1). The rightmost digit is one map "
                 "away from s, each one to its left one map away from its right neighbour; 4^10 map sequences, so "
                 "compositions cannot be memorised"),
    sample=_compose,
    max_prompt_chars=COMPOSE_STEPS + 2,
    max_answer_chars=COMPOSE_STEPS,
)


def _compose_odd(rng: random.Random) -> Problem:
    p = _compose(rng)
    return Problem(prompt=p.prompt, answer=p.answer + ":" + "".join(c for c in p.answer if int(c) % 2))


COMPOSE_ODD = Task(
    name="compose_odd",
    description=(f"the compose task's {COMPOSE_STEPS} states, ':', then the odd ones among them in order, then EOS. "
                 "The list's last digits are known as soon as the rightmost states are, but where they go depends on "
                 "how many states to their left are odd, which are known last"),
    sample=_compose_odd,
    max_prompt_chars=COMPOSE_STEPS + 2,
    max_answer_chars=2 * COMPOSE_STEPS + 1,
)

TASKS: dict[str, Task] = {t.name: t for t in (ADDITION, SORT, COUNT, SUDOKU, HINTED_ADDITION, LONG_ADDITION, HOP_CHAIN, DEDUPE,
                                              SUFFIX_SUM, COMPOSE, COMPOSE_ODD)}


def get_task(name: str) -> Task:
    """Look up a task by name, with a one-line error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}") from None
