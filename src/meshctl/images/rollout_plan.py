"""Moved to `meshctl.rollout.plan`; kept for the transition (see the package docstring)."""

from meshctl.rollout.plan import RolloutExit

__all__ = ["RolloutExit"]
