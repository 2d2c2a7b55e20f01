"""Capped exponential backoff: the one formula every retry loop of the service uses.

``backoff(n, base=b, cap=c)`` is ``min(c, b * 2**(n-1))`` for the n-th retry (n >= 1), optionally
multiplied by a random jitter factor drawn from ``jitter=(low, high)``. The exponent is bounded, so a loop
that has failed for days computes no huge number. It lives at the bottom of the layers (it imports
nothing of ours), so core and every backend may use it.
"""

from __future__ import annotations

import random

_MAX_EXPONENT = 30


def backoff(retry: int, *, base: float, cap: float, jitter: tuple[float, float] | None = None) -> float:
    """Seconds to wait before the ``retry``-th retry (1 for the first)."""
    delay: float = min(cap, base * 2.0 ** min(max(retry, 1) - 1, _MAX_EXPONENT))
    if jitter is not None:
        delay *= random.uniform(*jitter)
    return delay
