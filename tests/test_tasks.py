"""Task generators, split, checker and the shared HF tokenizer."""

import pytest
from transformers import AutoTokenizer

from dgt_interp.tasks import ADDITION, COUNT, SORT, SUDOKU, build_tokenizer, decode_answer, encode, get_task


def test_addition_problems_are_correct_and_deterministic():
    probs = ADDITION.problems("test", 200, seed=1)
    assert probs == ADDITION.problems("test", 200, seed=1)
    assert probs != ADDITION.problems("test", 200, seed=2)
    for p in probs:
        a, b = p.prompt[:-1].split("+")
        assert p.prompt.endswith("=") and 0 <= int(a) <= 9999 and 0 <= int(b) <= 9999
        assert p.answer == str(int(a) + int(b))


def test_split_is_disjoint_and_independent_of_seed():
    train = {p.prompt for p in ADDITION.problems("train", 5000, seed=0)}
    test = {p.prompt for s in range(3) for p in ADDITION.problems("test", 300, seed=s)}
    assert not train & test
    # roughly 1 in 20 prompts are held out
    sample = ADDITION.problems("train", 1, seed=0)[0]
    assert ADDITION.is_test(sample.prompt) is False
    held = sum(ADDITION.is_test(f"{a}+{b}=") for a in range(40) for b in range(50))
    assert 60 < held < 140


def test_sort_task_varies_length_and_sorts():
    probs = SORT.problems("train", 500, seed=0)
    lengths = {len(p.answer) for p in probs}
    assert lengths == set(range(2, 8))
    for p in probs:
        assert p.prompt.endswith(">") and p.answer == "".join(sorted(p.prompt[:-1]))


def test_checker_is_exact():
    p = ADDITION.problems("test", 1)[0]
    assert ADDITION.check(p, p.answer)
    assert not ADDITION.check(p, p.answer + "0")
    assert not ADDITION.check(p, "")


def test_tokenizer_roundtrips_and_loads_with_autotokenizer(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in ("12+34=", "3142>", "?[1,2]:#-"):
        assert loaded(text)["input_ids"] == tok(text)["input_ids"] == encode(text)
        assert loaded.decode(encode(text), skip_special_tokens=True).replace(" ", "") == text
    assert encode("7+8=") == [2, 10, 13, 11, 14]
    assert loaded.padding_side == "left" and loaded.pad_token_id == 0 and loaded.eos_token_id == 1
    assert decode_answer([4, 5, 1, 6, 0]) == "12"


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match="unknown task .nope.; choose one of: addition, compose, compose_odd, count, dedupe, hinted_addition, hop_chain, long_addition, sort"):
        get_task("nope")
    with pytest.raises(ValueError, match="not in the task vocabulary"):
        encode("12 + x")
    with pytest.raises(ValueError, match="split must be"):
        ADDITION.problems("dev", 1)


def test_addition_training_oversamples_unequal_operand_lengths_but_tests_stay_uniform():
    def unequal(probs):
        return sum(len(p.prompt[:-1].split("+")[0]) != len(p.prompt[:-1].split("+")[1]) for p in probs) / len(probs)

    train, test = ADDITION.problems("train", 2000, seed=0), ADDITION.problems("test", 2000, seed=0)
    assert unequal(test) < 0.25 < 0.4 < unequal(train)
    for p in train:
        a, b = p.prompt[:-1].split("+")
        assert p.answer == str(int(a) + int(b)) and not ADDITION.is_test(p.prompt)


def test_addition_lengths_mix_covers_every_operand_length_pairing():
    train = ADDITION.problems("train", 4000, seed=0, mix="lengths")
    pairs = {tuple(len(x) for x in p.prompt[:-1].split("+")) for p in train}
    assert pairs == {(i, j) for i in range(1, 5) for j in range(1, 5)}
    short_second = sum(len(p.prompt[:-1].split("+")[1]) < 4 for p in train) / len(train)
    assert short_second > 0.5  # uniform values would give 10%
    assert all(p.answer == str(eval(p.prompt[:-1])) for p in train)


def test_count_task_counts_then_lists_in_input_order():
    probs = COUNT.problems("train", 1000, seed=0)
    assert {len(p.prompt) - len("[0-9]?") for p in probs} == set(range(3, 9))
    counts = set()
    for p in probs:
        digits, rng = p.prompt[:-1].split("[")
        lo, hi = map(int, rng[:-1].split("-"))
        inside = "".join(d for d in digits if lo <= int(d) <= hi)
        assert p.answer == f"{len(inside)}:{inside}"
        assert len(p.answer) <= COUNT.max_answer_chars
        counts.add(len(inside))
    assert {0, 1, 2, 3, 4, 5} <= counts  # the output length varies
    assert get_task("count") is COUNT


def _valid_sudoku(g: str) -> bool:
    rows = [g[4 * r:4 * r + 4] for r in range(4)]
    units = rows + ["".join(r[c] for r in rows) for c in range(4)]
    units += ["".join(rows[r + i][c + j] for i in (0, 1) for j in (0, 1)) for r in (0, 2) for c in (0, 2)]
    return all(sorted(u) == list("1234") for u in units)


def _count_solutions(puzzle: list[str], limit: int = 2) -> int:
    """Plain backtracking, independent of the task's grid enumeration."""
    if "#" not in puzzle:
        return int(_valid_sudoku("".join(puzzle)))
    i = puzzle.index("#")
    r, c = divmod(i, 4)
    peers = {puzzle[4 * r + k] for k in range(4)} | {puzzle[4 * k + c] for k in range(4)}
    peers |= {puzzle[4 * (r // 2 * 2 + a) + c // 2 * 2 + b] for a in (0, 1) for b in (0, 1)}
    total = 0
    for d in "1234":
        if d not in peers:
            total += _count_solutions(puzzle[:i] + [d] + puzzle[i + 1:], limit)
            if total >= limit:
                break
    return total


def test_sudoku_puzzles_have_one_solution_which_is_the_answer():
    from dgt_interp.tasks.library import sudoku_grids

    assert len(sudoku_grids()) == 288  # the number of 4x4 sudokus
    probs = SUDOKU.problems("test", 100, seed=0)
    assert {p.prompt.count("#") for p in probs} <= set(range(4, 11)) and len({p.prompt.count("#") for p in probs}) > 4
    for p in probs:
        puzzle = p.prompt[:-1]
        assert p.prompt.endswith("?") and len(puzzle) == 16 and _valid_sudoku(p.answer)
        assert all(a in ("#", b) for a, b in zip(puzzle, p.answer))
        assert _count_solutions(list(puzzle)) == 1
    assert get_task("sudoku") is SUDOKU and len(encode(probs[0].prompt)) == 18


def test_hinted_addition_worked_answers_and_training_mix():
    from dgt_interp.tasks import HINTED_ADDITION
    from dgt_interp.tasks.library import parse_hinted

    def column_carries(a, b):  # schoolbook, digit lists
        out, c = [], 0
        da, db = str(a)[::-1], str(b)[::-1]
        for i in range(max(len(da), len(db))):
            c = (int(da[i]) if i < len(da) else 0) + (int(db[i]) if i < len(db) else 0) + c >= 10 and 1 or 0
            out.append(str(c))
        return "".join(out)

    for p in HINTED_ADDITION.problems("test", 300, seed=0):  # held-out: hint-free, true worked answers
        a, b, hint = parse_hinted(p.prompt)
        assert hint is None and p.answer == f"{column_carries(a, b)}:{a + b}"
    train = HINTED_ADDITION.problems("train", 4000, seed=0)
    kinds = {"none": 0, "correct": 0, "wrong copied": 0, "wrong ignored": 0}
    for p in train:
        a, b, hint = parse_hinted(p.prompt)
        carry, result = p.answer.split(":")
        assert carry == column_carries(a, b)  # the carries are always the true ones
        if hint is None:
            kinds["none"] += 1
        elif hint == a + b:
            kinds["correct"] += 1
        else:
            kinds["wrong copied" if int(result) == hint else "wrong ignored"] += 1
            assert int(result) in (hint, a + b) and len(str(hint)) == len(str(a + b))
    n = len(train)  # 40 / 20 / 20 / 20 %; binomial sd at n = 4000 is under 1 point
    assert abs(kinds["none"] / n - 0.4) < 0.03 and abs(kinds["correct"] / n - 0.2) < 0.03
    assert abs(kinds["wrong copied"] / n - 0.2) < 0.03 and abs(kinds["wrong ignored"] / n - 0.2) < 0.03


def test_long_addition_has_long_carry_chains():
    from dgt_interp.tasks import LONG_ADDITION
    from dgt_interp.tasks.library import carries

    def longest_chain(a, b):
        best = cur = 0
        for c in carries(a, b):
            cur = cur + 1 if c == "1" else 0
            best = max(best, cur)
        return best

    problems = LONG_ADDITION.problems("test", 1000, seed=0)
    chains = []
    for p in problems:
        a, b = map(int, p.prompt.rstrip("=").split("+"))
        assert p.answer == str(a + b) and a < 10**6 and b < 10**6
        chains.append(longest_chain(a, b))
    # uniform operands give a chain of 4+ columns in ~1% of sums; the chain half makes it common
    assert sum(c >= 4 for c in chains) / len(chains) > 0.1


def test_hop_chain_answers_chase_the_written_permutation_last_hop_first():
    from dgt_interp.tasks import HOP_CHAIN

    problems = HOP_CHAIN.problems("test", 500, seed=0)
    for p in problems:
        body, query = p.prompt.split("?")
        pairs = body.rstrip(",").split(",")
        assert len(pairs) == 6 and query[-1] == "=" and len(p.prompt) == HOP_CHAIN.max_prompt_chars
        table = {}
        for pair in pairs:
            key, arrow, value = pair
            assert arrow == ">"
            table[key] = value
        assert sorted(table) == sorted(table.values()) == list("012345")  # a permutation
        x = query[0]
        one, two, three = table[x], table[table[x]], table[table[table[x]]]
        assert p.answer == three + two + one
    # the pair order and the query vary, so the position of a pair says nothing
    assert len({p.prompt[0] for p in problems}) == 6 and len({p.prompt[-2] for p in problems}) == 6


def test_hop_chain_holds_out_whole_permutations():
    from dgt_interp.tasks import HOP_CHAIN

    def perm(prompt):
        return "".join(sorted(prompt.split("?")[0].rstrip(",").split(",")))

    train = {perm(p.prompt) for p in HOP_CHAIN.problems("train", 4000, seed=0)}
    test = [p.prompt for p in HOP_CHAIN.problems("test", 400, seed=0)]
    assert not train & {perm(t) for t in test}
    # the same permutation with the pairs reordered and another query stays held out
    t = test[0]
    body, query = t.split("?")
    pairs = body.rstrip(",").split(",")
    other = ",".join(reversed(pairs)) + ",?" + str((int(query[0]) + 1) % 6) + "="
    assert HOP_CHAIN.is_test(other)


def test_dedupe_answers_are_the_first_occurrences_and_vary_in_length():
    from dgt_interp.tasks import DEDUPE

    problems = DEDUPE.problems("test", 1000, seed=0)
    lengths = set()
    for p in problems:
        digits = p.prompt.rstrip("=")
        assert p.prompt.endswith("=") and 8 <= len(digits) <= 14 and digits.isdigit()
        seen = []
        for c in digits:  # reference: scan left to right, keep a digit not seen before
            if c not in seen:
                seen.append(c)
        assert p.answer == "".join(seen)
        lengths.add(len(p.answer))
    assert lengths == set(range(2, 11))  # 2..10 distinct digits: the answer's length is uncertain
    assert DEDUPE.check(problems[0], problems[0].answer)


def test_suffix_sum_answers_are_the_sums_from_the_right():
    from dgt_interp.tasks import SUFFIX_SUM

    problems = SUFFIX_SUM.problems("test", 500, seed=0)
    for p in problems:
        digits = p.prompt.rstrip("=")
        assert p.prompt.endswith("=") and len(digits) == 8 and digits.isdigit()
        # reference: digit j is sum(digits[j:]) mod 10, from scratch per position
        assert p.answer == "".join(str(sum(map(int, digits[j:])) % 10) for j in range(8))
    assert SUFFIX_SUM.problems("test", 1, seed=0)[0] == problems[0]
    assert {p.answer[0] for p in problems} == set("0123456789")
    assert SUFFIX_SUM.check(problems[0], problems[0].answer) and not SUFFIX_SUM.check(problems[0], problems[0].answer[1:])


def test_compose_answers_apply_the_maps_from_the_right():
    from dgt_interp.tasks import COMPOSE, COMPOSE_ODD
    from dgt_interp.tasks.library import COMPOSE_OPS

    for m in COMPOSE_OPS.values():
        assert sorted(m) == list(range(10))  # every map is a permutation of the digits
    for p in COMPOSE.problems("test", 300, seed=0):
        ops, start = p.prompt[:-2], int(p.prompt[-2])
        assert len(ops) == 10 and p.prompt.endswith("=")
        # reference: digit j from scratch, applying maps j..9 right to left to the start digit
        for j in range(10):
            x = start
            for op in ops[j:][::-1]:
                x = COMPOSE_OPS[op][x]
            assert p.answer[j] == str(x)
    for p in COMPOSE_ODD.problems("test", 100, seed=0):
        states, odd = p.answer.split(":")
        assert odd == "".join(c for c in states if int(c) % 2)
