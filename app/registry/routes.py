"""Where a model reference sends a request: one model, or a weighted split between models (sticky per routing key),
and the shadow model that answers a copy. Plain data, built from the database and kept by each API process for at
most the lookup ttl."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

# Weights are percentages: a split's weights add up to this.
TOTAL_WEIGHT = 100


@dataclass(frozen=True)
class ServedModel:
    """What serving needs of a registered model, without its database row."""

    id: str
    task: str
    storage_key: str
    runtime: str = "torch"  # how it runs: the alias's runtime (a model named by id runs as trained)


@dataclass(frozen=True)
class Routes:
    """A model id or an alias resolved: the models that share its traffic, by weight, and its shadow."""

    alias: str | None  # None: the request named a model id
    routes: tuple[tuple[ServedModel, int], ...]
    shadow: ServedModel | None = None

    def pick(self, routing_key: str | None) -> ServedModel:
        """The model for one request: by its routing key's bucket (the same key, the same model while the weights
        stay), or at random without one."""
        if len(self.routes) == 1:
            return self.routes[0][0]
        point = bucket(self.alias or "", routing_key) if routing_key is not None else random.randrange(TOTAL_WEIGHT)
        for model, weight in self.routes:
            if point < weight:
                return model
            point -= weight
        return self.routes[-1][0]

    def models(self) -> list[ServedModel]:
        """Every model this reference may need: its routes, then its shadow."""
        return [m for m, _ in self.routes] + ([self.shadow] if self.shadow else [])


def bucket(alias: str, routing_key: str) -> int:
    """A routing key's fixed place in 0..99 for this alias. Buckets below the first route's weight go to it, the
    next ones to the second, ...: raising a canary's weight from 10 to 20 moves only keys to the canary, never back."""
    digest = hashlib.sha256(f"{alias}\0{routing_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % TOTAL_WEIGHT
