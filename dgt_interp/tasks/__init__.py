"""Algorithmic tasks with known algorithms, and the character tokenizer they share."""

from .base import Problem, Split, Task, TaskError
from .library import (ADDITION, COUNT, DEDUPE, HINTED_ADDITION, HOP_CHAIN, LONG_ADDITION, SORT, SUDOKU, SUFFIX_SUM, COMPOSE, COMPOSE_ODD,
                      TASKS,
                      get_task)
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB, build_tokenizer, decode_answer, encode, is_task_tokenizer

__all__ = [
    "Problem", "Split", "Task", "TaskError", "ADDITION", "COUNT", "DEDUPE", "HINTED_ADDITION", "HOP_CHAIN", "LONG_ADDITION", "SORT", "SUDOKU", "SUFFIX_SUM", "COMPOSE", "COMPOSE_ODD", "TASKS",
    "get_task",
    "BOS_ID", "EOS_ID", "PAD_ID", "VOCAB", "build_tokenizer", "decode_answer", "encode", "is_task_tokenizer",
]
