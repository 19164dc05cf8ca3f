"""Process tuning shared by the gateway and the bench's bare relay."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Move start-up objects out of the collector's way and collect less often.

    The request path allocates many short-lived objects but few cycles; the default thresholds
    made the cyclic collector a measurable share of each request.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
