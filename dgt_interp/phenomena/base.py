"""What every phenomenon probe shares: the error type and the canvas check."""

from __future__ import annotations

from dgt_interp.errors import DgtInterpError
from dgt_interp.trajectory import TrajectoryError


class PhenomenaError(DgtInterpError, ValueError):
    """Bad detector arguments (one-line message that says what to do)."""


def check_canvas(traj, canvas: int) -> list[int]:
    """The global steps of `canvas` (`Trajectory.canvas_steps`), as a `PhenomenaError` if out of range."""
    try:
        return traj.canvas_steps(canvas)
    except TrajectoryError as e:
        raise PhenomenaError(str(e)) from None


__all__ = ["PhenomenaError", "check_canvas"]
