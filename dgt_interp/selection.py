"""The one normaliser of step / position / layer / head selections (ints, slices, lists, None).

Everything that takes a selection (`capture(steps=, positions=)`, `Lens.run(steps=, layers=,
positions=)`, patching `Site`s and sweeps) goes through `select`, so the same spelling means the
same indices everywhere:

- `None` = all; an int = that one; a list / tuple / range of ints = those (sorted, deduplicated);
- a `slice` is applied to the available values in order (`slice(2, 5)`, `slice(None, None, 2)`);
  negative slice bounds count from the end, as in Python (`slice(-3, None)` = the last three);
- ints may be any integer type (Python, numpy, 0-d integer tensors); bools and floats are refused;
- every value must be available: one-line error of the caller's exception type otherwise.
"""

from __future__ import annotations

import operator
from typing import Sequence, Union

from dgt_interp.errors import DgtInterpError

Index = Union[int, slice, Sequence[int], None]


class SelectionError(DgtInterpError, ValueError):
    """A step / position / layer / head selection that does not fit (one-line message)."""


def as_int(value, what: str, error: type[Exception] = SelectionError) -> int:
    """`value` as a Python int (numpy / tensor integers accepted); a one-line error for bools, floats, strings."""
    if isinstance(value, bool) or getattr(value, "dtype", None) is not None and str(value.dtype) == "torch.bool":
        raise error(f"{what} {value!r} is not an int; pass ints, a slice or a list of ints")
    try:
        return operator.index(value)
    except TypeError:
        raise error(f"{what} {value!r} is not an int; pass ints, a slice or a list of ints") from None


def select(spec: Index, available: int | Sequence[int], what: str, hint: str = "",
           error: type[Exception] = SelectionError) -> list[int]:
    """Normalise `spec` to a sorted list of values of `available` (an int n means `range(n)`).

    >>> select(slice(-2, None), 5, "step")     # [3, 4]
    >>> select([4, 1, 1], [0, 1, 4, 9], "step")  # [1, 4]
    """
    values = list(range(available)) if isinstance(available, int) else [int(v) for v in available]
    if spec is None:
        return values
    if isinstance(spec, slice):
        return sorted(values[spec])
    if isinstance(spec, (str, bytes, float)) or not _iterable(spec):
        items = [as_int(spec, what, error)]
    else:
        items = [as_int(i, what, error) for i in spec]
    have = set(values)
    for i in items:
        if i not in have:
            if isinstance(available, int):
                rng = f"0..{available - 1}" if available else "none"
            else:
                rng = f"{values[0]}..{values[-1]}" if values else "none"
            raise error(f"{what} {i} is out of range: valid {what}s are {rng}" + (f" ({hint})" if hint else ""))
    return sorted(set(items))


def _iterable(x) -> bool:
    if getattr(x, "ndim", None) == 0:  # a 0-d tensor / numpy scalar is one value
        return False
    try:
        iter(x)
    except TypeError:
        return False
    return True


__all__ = ["Index", "SelectionError", "as_int", "select"]
