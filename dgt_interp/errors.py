"""The one base class of every error dgt_interp raises on bad input.

Each module defines its own subclass (`CaptureError`, `PatchingError`, `LensError`, ...), and each
also subclasses the built-in type it always was (`ValueError`, `MemoryError`), so existing
`except ValueError` code keeps working. The CLI turns a `DgtInterpError` (and only it) into a
one-line `error: ...` and exit status 2; anything else is a bug and shows its traceback.

    >>> try:
    ...     dgt_interp.capture(model, ids, names="blocks.99.hook_resid_post")
    ... except dgt_interp.DgtInterpError as e:
    ...     print(e)          # one line that says what to do
"""

from __future__ import annotations


class DgtInterpError(Exception):
    """Bad input to dgt_interp: the message is one line that says what to do."""


__all__ = ["DgtInterpError"]
