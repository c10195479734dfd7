"""When to try a job again after a transient failure."""

from __future__ import annotations

import random

_RNG = random.Random()


def backoff_delay(
    attempt: int, *, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before attempt `attempt + 1`: exponential in the attempts made so far,
    capped, with "equal jitter": at least half the step, so a retry always backs off, and a
    random rest, so that jobs failing together do not retry together."""
    step = min(cap_s, base_s * 2.0 ** max(attempt - 1, 0))
    return step / 2 + (rng or _RNG).uniform(0, step / 2)
