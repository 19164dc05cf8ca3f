"""The store contract every backend fulfils, declared in parts by concern.

Calls are blocking; the gateway runs them in a small thread pool so the IOLoop never waits on
them. Usage inserts are idempotent by request id, so a batch replayed after a partial failure
never counts twice. The gateway holds a `Store`: every part, and the lifecycle of the whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

from ..records import AdminToken, AuditEntry, KeyRecord, ModelRecord, UsageEvent, UserRecord


class StoreError(Exception):
    """The store failed or cannot be reached."""


# --- keys and people ---------------------------------------------------------------------

KEY_STATUSES = ("active", "revoked", "expired")
USER_CHANGES = ("admin_granted", "disabled", "limits")
KEY_CHANGES = ("name", "models", "expires", "limits")


class KeysAndPeople(Protocol):
    """API keys, and the people who own them and sign in."""

    def insert_key(self, record: KeyRecord) -> None: ...

    def key_by_hash(self, key_hash: str) -> KeyRecord | None: ...

    def get_key(self, key_id: str) -> KeyRecord | None: ...

    def list_keys(self, owner: str | None = None, active_only: bool = False) -> list[KeyRecord]: ...

    def revoke_key(self, key_id: str) -> KeyRecord | None:
        """Mark the key inactive; return it, or None if no such key."""

    def touch_keys(self, last_used: dict[str, float]) -> None:
        """Record last-use times (batched by the gateway)."""

    def find_keys(self, owner: str | None = None, model: str | None = None, status: str | None = None,
                  search: str | None = None, now: float = 0.0, offset: int = 0,
                  limit: int = 50) -> tuple[list[KeyRecord], int]:
        """One page of keys, newest first (created descending, then id), and how many match in all.

        `model`: keys that may use it (they list it, or list no model at all). `status`: one of
        KEY_STATUSES as `KeyRecord.status(now)` tells it. `search`: case-insensitive substring of
        the name, the id or the display prefix.
        """

    def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        """Apply `changes` (keys from KEY_CHANGES; `expires` may be None) in one atomic write;
        None if no such key."""

    def upsert_user(self, user: UserRecord) -> UserRecord:
        """Create the user, or update display name, email, is_admin and last_login of an existing one.

        Keeps `created`, `agreement_version` and `limits` of an existing user; returns the stored user.
        """

    def get_user(self, username: str) -> UserRecord | None: ...

    def set_agreement(self, username: str, version: str) -> None:
        """Record that the user accepted this version of the terms of use."""

    def set_user_limits(self, username: str, limits: dict[str, float]) -> UserRecord:
        """Replace a user's limit overrides (creating the user if missing)."""

    def find_users(self, search: str | None = None, admin: bool | None = None, disabled: bool | None = None,
                   offset: int = 0, limit: int = 50) -> tuple[list[UserRecord], int]:
        """One page of users ordered by username, and how many match in all.

        `search` is a case-insensitive substring of username, display name or email; `admin`
        matches the effective role (`is_admin or admin_granted`).
        """

    def update_user(self, username: str, changes: dict[str, Any]) -> UserRecord | None:
        """Apply `changes` (keys from USER_CHANGES) in one atomic write; None if no such user."""


# --- usage -------------------------------------------------------------------------------

GROUPS = ("user", "key", "model", "day")
REPORT_ORDERS = ("group", "cost", "requests", "tokens")
BUCKETS = {"hour": 3600, "day": 86400}


class UsageRow(TypedDict):
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    estimated: int


class UsageTotals(TypedDict):
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


class Usage(Protocol):
    """Usage events as calls produce them, their rollups, and the sums and reports read from both."""

    def insert_usage(self, events: list[UsageEvent]) -> int:
        """Append events, ignoring request ids already stored; return how many were new."""

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
        gives the same rows. "day" also rebuilds the per-user daily rollups (per day, user and
        model, without the key) and, from those, the per-model daily rollups (per day and model)
        that `usage_report` reads. Returns how many (per-key) rows were written.
        """

    def usage_report(self, group_by: str, since: float, live_since: float, until: float | None = None,
                     user: str | None = None, key_id: str | None = None, model: str | None = None,
                     order: str = "group", offset: int = 0,
                     limit: int | None = None) -> tuple[list[UsageRow], int, UsageTotals]:
        """Usage grouped by user, key, model or day (YYYY-MM-DD): a page of rows, how many groups
        there are, and the totals over all of them.

        Reads the daily rollups for whole days in [since, live_since) and raw events from
        live_since (or since, if later) to `until`, so a report over a year costs no more than
        its rollups while the last days stay live. `since` and `live_since` are UTC midnights.
        Without a key in group or filter it reads the per-user daily rollups, which carry no key
        and so stay small however many keys there are; by day or by model with neither a user nor
        a key filter, it reads the per-model daily rollups, a few rows a day however many people
        there are. `order` is one of REPORT_ORDERS: "group" ascending, the others descending
        ("tokens" is prompt + completion), ties by group.
        """

    def find_usage(self, user: str | None = None, key_id: str | None = None, since: float = 0.0,
                   until: float | None = None, offset: int = 0, limit: int = 50) -> tuple[list[UsageEvent], int]:
        """One page of raw events, newest first (ts descending, then request id), and how many match."""


# --- admin and audit ---------------------------------------------------------------------


class AdminAndAudit(Protocol):
    """The model catalog the admin API edits, admin tokens, and the audit log of admin changes."""

    def list_models(self) -> list[ModelRecord]:
        """Every model added through the admin API, ordered by id."""

    def get_model(self, model_id: str) -> ModelRecord | None: ...

    def insert_model(self, record: ModelRecord) -> bool:
        """Add the model; False (and nothing written) if the id is taken."""

    def update_model(self, record: ModelRecord) -> bool:
        """Replace settings and `updated` of an existing model; False if there is none."""

    def delete_model(self, model_id: str) -> bool: ...

    def insert_admin_token(self, token: AdminToken) -> None: ...

    def admin_token_by_hash(self, token_hash: str) -> AdminToken | None: ...

    def list_admin_tokens(self) -> list[AdminToken]:
        """Every admin token, newest first."""

    def revoke_admin_token(self, token_id: str) -> AdminToken | None:
        """Mark the token inactive; return it, or None if no such token."""

    def touch_admin_token(self, token_id: str, ts: float) -> None: ...

    def insert_audit(self, entry: AuditEntry) -> AuditEntry:
        """Append an entry; returns it with its `id` (assigned by the store, increasing with time)."""

    def find_audit(self, actor: str | None = None, action: str | None = None, target: str | None = None,
                   via: str | None = None, since: float = 0.0, until: float | None = None, offset: int = 0,
                   limit: int = 50) -> tuple[list[AuditEntry], int]:
        """One page of entries, newest first, and how many match. `action` matches as a prefix
        ("key." finds every key change); the others match exactly; ts in [since, until)."""


# --- leases and claims -------------------------------------------------------------------

HOLD_FIELDS = ("user", "key_id")


@dataclass(frozen=True)
class BudgetHold:
    """What one call reserves of one budget while the store keeps the budgets (Redis away).

    A budget's use is what its events in the store add up to (cost times `scale`, or the tokens of
    `models`) since the start of its period, plus the live holds on its counter whose events are
    not stored yet: a hold counts from admission until its call's event reaches the store.
    """

    counter: str
    field: str
    who: str
    since: float
    tokens: bool
    models: tuple[str, ...]
    scale: int
    amount: int
    limit: int


class LeasesAndClaims(Protocol):
    """What replicas sharing the store take in turn or once: job leases, budget holds, one-time claims."""

    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the lease `name` for `ttl` seconds; False while another holder has it."""

    def reserve_budgets(self, request_id: str, holds: list[BudgetHold], now: float,
                        expires: float) -> tuple[int, list[int]]:
        """Hold every budget for one call if all of them fit, else none.

        Returns (index of the first hold that does not fit, or -1; each budget's use before this
        call). Atomic across processes sharing the store: two replicas never both take the last of
        a budget. Holds count until their call's event is stored, or until `expires`.
        """

    def release_budgets(self, request_id: str) -> None:
        """Drop a call's holds (it ended without a usage event)."""

    def held_budgets(self, now: float) -> dict[str, int]:
        """Live holds whose events are not stored yet, summed per counter."""

    def purge_holds(self, now: float) -> int:
        """Drop holds that expired or whose events are stored; return how many went."""

    def claim_once(self, namespace: str, item_id: str, expires: float) -> bool:
        """Record `item_id` in `namespace` until `expires`; False if it is already recorded and unexpired.

        Atomic across processes sharing the store: SAML assertion IDs (replay) and logged-out sessions.
        """

    def is_claimed(self, namespace: str, item_id: str) -> bool: ...

    def purge_claims(self, now: float) -> int:
        """Drop claims that expired before `now`."""


class Store(KeysAndPeople, Usage, AdminAndAudit, LeasesAndClaims, Protocol):
    """The whole store: every part, and its lifecycle."""

    def init(self) -> None:
        """Create the schema if it is missing."""

    def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    def close(self) -> None: ...
