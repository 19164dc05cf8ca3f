"""The store contract every backend fulfils.

Calls are blocking; the gateway runs them in a small thread pool so the IOLoop never waits on
them. Usage inserts are idempotent by request id, so a batch replayed after a partial failure
never counts twice.
"""

from __future__ import annotations

from typing import Protocol, TypedDict

from ..records import KeyRecord, UsageEvent, UserRecord

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


class DailyRow(TypedDict):
    day: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    estimated: int


class RollupRow(TypedDict):
    bucket: str
    start: float
    user: str
    key_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    estimated: int


BUCKETS = {"hour": 3600, "day": 86400}


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

    def usage_by_day(
        self, since: float, until: float | None = None, user: str | None = None, key_id: str | None = None
    ) -> list[DailyRow]:
        """Sums per UTC day (YYYY-MM-DD) and model, ordered by day then model."""

    def delete_usage_before(self, ts: float) -> int:
        """Retention: drop raw events older than `ts`; return how many went."""

    def rollup_usage(self, bucket: str, start: float, end: float) -> int:
        """Rebuild the `bucket` ("hour" or "day", UTC-aligned) rollups whose start lies in [start, end).

        Replaces those rows from the raw events, so running it twice, or on two replicas at once,
        gives the same rows. Returns how many rows were written.
        """

    def usage_rollups(
        self,
        bucket: str,
        since: float = 0.0,
        until: float | None = None,
        user: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
    ) -> list[RollupRow]:
        """Rollup rows whose bucket start lies in [since, until), ordered by start, user, key, model."""

    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the lease `name` for `ttl` seconds; False while another holder has it."""

    def set_key_limits(self, key_id: str, limits: dict[str, float]) -> KeyRecord | None:
        """Replace a key's limit overrides; return the key, or None if no such key."""

    def upsert_user(self, user: UserRecord) -> UserRecord:
        """Create the user, or update display name, email, is_admin and last_login of an existing one.

        Keeps `created`, `agreement_version` and `limits` of an existing user; returns the stored user.
        """

    def get_user(self, username: str) -> UserRecord | None: ...

    def list_users(self) -> list[UserRecord]: ...

    def set_agreement(self, username: str, version: str) -> None:
        """Record that the user accepted this version of the terms of use."""

    def set_user_limits(self, username: str, limits: dict[str, float]) -> UserRecord:
        """Replace a user's limit overrides (creating the user if missing)."""

    def claim_once(self, namespace: str, item_id: str, expires: float) -> bool:
        """Record `item_id` in `namespace` until `expires`; False if it is already recorded and unexpired.

        Atomic across processes sharing the store: SAML assertion IDs (replay) and logged-out sessions.
        """

    def is_claimed(self, namespace: str, item_id: str) -> bool: ...

    def purge_claims(self, now: float) -> int:
        """Drop claims that expired before `now`."""
