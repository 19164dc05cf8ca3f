"""The store contract every backend fulfils.

Calls are blocking; the gateway runs them in a small thread pool so the IOLoop never waits on
them. Usage inserts are idempotent by request id, so a batch replayed after a partial failure
never counts twice.
"""

from __future__ import annotations

from typing import Protocol, TypedDict

from ..records import KeyRecord, UsageEvent

GROUPS = ("user", "key", "model", "day")


class StoreError(Exception):
    """The store failed or cannot be reached."""


class UsageRow(TypedDict):
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    estimated: int


class Store(Protocol):
    def init(self) -> None:
        """Create the schema if it is missing."""

    def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    def close(self) -> None: ...

    def insert_key(self, record: KeyRecord) -> None: ...

    def key_by_hash(self, key_hash: str) -> KeyRecord | None: ...

    def list_keys(self, owner: str | None = None, active_only: bool = False) -> list[KeyRecord]: ...

    def revoke_key(self, key_id: str) -> KeyRecord | None:
        """Mark the key inactive; return it, or None if no such key."""

    def touch_keys(self, last_used: dict[str, float]) -> None:
        """Record last-use times (batched by the gateway)."""

    def insert_usage(self, events: list[UsageEvent]) -> int:
        """Append events, ignoring request ids already stored; return how many were new."""

    def count_usage(self) -> int: ...

    def usage_events(self, since: float = 0.0, until: float | None = None) -> list[UsageEvent]: ...

    def usage_summary(
        self,
        group_by: str,
        since: float = 0.0,
        until: float | None = None,
        user: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
    ) -> list[UsageRow]: ...
