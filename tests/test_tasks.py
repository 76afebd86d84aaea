"""Task generators, split, checker and the shared HF tokenizer."""

import pytest
from transformers import AutoTokenizer

from dgt_interp.tasks import ADDITION, SORT, build_tokenizer, decode_answer, encode, get_task


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
    with pytest.raises(ValueError, match="unknown task 'nope'; choose one of: addition, sort"):
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
