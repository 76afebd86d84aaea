"""The compose_odd study's layout and causal model: ten states, ':', then the odd states in order.

Problems (`dgt_interp.tasks.COMPOSE_ODD`): the compose task's prompt (`+#+++##+>?3=`), answer
`6554320216:5531`: the ten states c_0..c_9 at canvas positions 0..9 (as in the compose study), ':' at 10, then
the odd states in order from position 11 (`LIST_START`), then EOS. Odd state c_j lands at position 11 + (number of odd states
among c_0..c_{j-1}): the states to its *left*, which a model that composes the maps right to left computes
*last*. So the list's tail is known (the rightmost states come first) before its place in the canvas is: the
setting in which a drafted sequence should sit at a shifted offset and move as the count resolves (sequence
smearing), and spread its probability over neighbouring positions (token smearing).

`COMPOSE_ODD_MODEL` extends the compose causal model (same variables c_0..c_8) with the list; `list_offset`
gives where each odd state goes.
"""

from __future__ import annotations

from case_studies.compose.hypothesis import COMPOSE_MODEL, N
from dgt_interp.causal import CausalModel

COLON_POS = N
LIST_START = N + 1


def odd_list(states: str) -> str:
    """The odd digits of `states`, in order."""
    return "".join(c for c in states if int(c) % 2)


def list_offset(states: str, j: int) -> int:
    """Canvas position of state j in the list (it must be odd): LIST_START + odd states to its left."""
    return LIST_START + len(odd_list(states[:j]))


COMPOSE_ODD_MODEL = CausalModel(
    inputs=COMPOSE_MODEL.inputs,
    variables={**{k: f for k, f in COMPOSE_MODEL.variables.items() if k != "answer"},
               "answer": lambda v: (s := "".join(str(v[f"c{j}"]) for j in range(N))) + ":" + odd_list(s)},
    output="answer")


__all__ = ["COLON_POS", "LIST_START", "COMPOSE_ODD_MODEL", "odd_list", "list_offset"]
