"""Exponential backoff with jitter for reconnecting to the operator and re-reading the Secret."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each drawn uniformly from
    [d/2, d] ("equal jitter"): replicas that lost the operator together do not all come
    back in the same instant, and no delay is ever shorter than half its step."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self) -> float:
        step = min(self.maximum, self.initial * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return self.rng.uniform(step / 2, step)

    def reset(self) -> None:
        self.attempt = 0
