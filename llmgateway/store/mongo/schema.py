"""The MongoDB store's query table: every query it runs, by name, with the index that serves it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING

ROLLUP_KEY = ("bucket", "start", "user", "key_id", "model")
DAILY_USER_KEY = ("start", "user", "model")
DAILY_MODEL_KEY = ("start", "model")
Index = tuple[tuple[str, int], ...]
ID: Index = (("_id", ASCENDING),)
NEWEST_KEYS: Index = (("created", DESCENDING), ("_id", ASCENDING))
OLDEST_KEYS: Index = (("created", ASCENDING), ("_id", ASCENDING))
NEWEST_EVENTS: Index = (("ts", DESCENDING), ("_id", ASCENDING))
OLDEST_EVENTS: Index = (("ts", ASCENDING), ("_id", ASCENDING))
NEWEST_AUDIT: Index = (("ts", DESCENDING), ("_id", DESCENDING))
ROLLUP_ORDER: Index = tuple((name, ASCENDING) for name in ROLLUP_KEY[1:])


@dataclass(frozen=True)
class Shape:
    """A query the store runs: its collection, the index it is hinted to, its order, and why that index.

    `reads_documents` names the filter fields the index cannot hold, tested on fetched documents
    by choice (say why in `why`); every other filter field is bounded by the index or tested on its keys.
    """

    collection: str
    index: Index
    why: str
    sort: Index = ()
    reads_documents: tuple[str, ...] = ()


# Every query the store runs, by name, with the index that serves it. `init` creates exactly these
# indexes (with INDEX_OPTIONS), reads are hinted to them, and tests/test_store_mongo_faults.py
# fails for a query the store runs that no index here serves. The README's query table is this one.
QUERIES: dict[str, Shape] = {
    "keys.by_id": Shape("api_keys", ID, "equality on _id: one key (get, revoke, update, touch)"),
    "keys.by_hash": Shape("api_keys", (("hash", ASCENDING),), "equality on the unique hash: every API call's key"),
    "keys.of_owner": Shape(
        "api_keys", (("owner", ASCENDING), *OLDEST_KEYS), "owner equality, then the index's order: a person's "
        "keys, oldest first, no sort stage (active_only is checked on those few documents)", OLDEST_KEYS),
    "keys.all": Shape("api_keys", OLDEST_KEYS, "every key, oldest first, in index order (the CLI's listing)",
                      OLDEST_KEYS),
    "keys.page": Shape(
        "api_keys", (*NEWEST_KEYS, ("active", ASCENDING), ("expires", ASCENDING), ("name", ASCENDING),
                     ("prefix", ASCENDING)),
        "the admin key list without an owner: walks newest first and stops at the page; status and "
        "search are tested on the index keys (every field they read is in the index), so counts and "
        "deep pages read no document; `model` alone reads documents (an array would make the index "
        "multikey, which cannot cover a query)", NEWEST_KEYS, ("models",)),
    "keys.page_of_owner": Shape(
        "api_keys", (("owner", ASCENDING), *NEWEST_KEYS), "one person's keys newest first: owner equality, "
        "then the index's order", NEWEST_KEYS),
    "users.by_id": Shape("users", ID, "equality on _id (username); the tests' list_users walks it in "
                        "order", ID),
    "users.page": Shape(
        "users", (("_id", ASCENDING), ("display_name", ASCENDING), ("email", ASCENDING), ("is_admin", ASCENDING),
                  ("admin_granted", ASCENDING), ("disabled", ASCENDING)),
        "the admin user list by username: search, role and status are tested on the index keys, so a "
        "search reads only the (narrow) index, and documents only for the page", ID),
    "events.by_id": Shape("usage_events", ID, "equality on _id (the request id): which held calls' events are "
                          "stored already"),
    "events.by_ts": Shape(
        "usage_events", OLDEST_EVENTS, "a ts range without user, key or model: rollup rebuilds, reports' "
        "live part, the tests' usage_events() in order, retention's delete", OLDEST_EVENTS),
    "events.newest": Shape("usage_events", NEWEST_EVENTS, "the admin event list without user or key, newest "
                           "first, stops at the page", NEWEST_EVENTS),
    "events.of_user": Shape(
        "usage_events", (("user", ASCENDING), *NEWEST_EVENTS), "user equality then ts: one person's events "
        "newest first (page), or a ts range of them (sums)", NEWEST_EVENTS),
    "events.of_key": Shape(
        "usage_events", (("key_id", ASCENDING), *NEWEST_EVENTS), "key equality then ts: one key's events "
        "(a user filter as well is checked on those documents: a key has one owner)", NEWEST_EVENTS),
    "events.of_model": Shape("usage_events", (("model", ASCENDING), ("ts", ASCENDING)),
                             "model equality then a ts range: sums of one model"),
    "rollups.by_start": Shape(
        "usage_rollups", tuple((name, ASCENDING) for name in ROLLUP_KEY), "the unique row key: bucket "
        "equality then a start range, in the rows' order; rebuilds upsert by _id and delete by it", ROLLUP_ORDER),
    "rollups.of_key": Shape(
        "usage_rollups", (("bucket", ASCENDING), ("key_id", ASCENDING), ("start", ASCENDING), ("user", ASCENDING),
                          ("model", ASCENDING)),
        "bucket and key equality, then start: one key's rows in order", ROLLUP_ORDER),
    "rollups.of_user": Shape(
        "usage_rollups", (("bucket", ASCENDING), ("user", ASCENDING), ("start", ASCENDING), ("key_id", ASCENDING),
                          ("model", ASCENDING)),
        "bucket and user equality, then start: one person's rows in order", ROLLUP_ORDER),
    "daily_users.by_start": Shape(
        "usage_daily_users", tuple((name, ASCENDING) for name in DAILY_USER_KEY),
        "the unique row key: a start range (reports by user, rebuilds)"),
    "daily_users.of_user": Shape("usage_daily_users", (("user", ASCENDING), ("start", ASCENDING)),
                                 "user equality then a start range: one person's report"),
    "daily_models.by_start": Shape("usage_daily_models", tuple((name, ASCENDING) for name in DAILY_MODEL_KEY),
                                   "the unique row key: a start range (reports by day or model)"),
    "tokens.by_id": Shape("admin_tokens", ID, "equality on _id"),
    "tokens.by_hash": Shape("admin_tokens", (("hash", ASCENDING),), "equality on the unique hash"),
    "tokens.newest": Shape("admin_tokens", NEWEST_KEYS, "every token newest first, in index order", NEWEST_KEYS),
    "audit.page": Shape(
        "audit_log", (("ts", ASCENDING), ("_id", ASCENDING), ("action", ASCENDING), ("via", ASCENDING)),
        "the audit list without actor or target: walked backwards (newest first), stops at the page; "
        "the action prefix and `via` are tested on the index keys", NEWEST_AUDIT),
    "audit.of_actor": Shape("audit_log", (("actor", ASCENDING), ("ts", ASCENDING), ("_id", ASCENDING)),
                            "actor equality, then the list's order backwards", NEWEST_AUDIT),
    "audit.of_target": Shape("audit_log", (("target", ASCENDING), ("ts", ASCENDING), ("_id", ASCENDING)),
                             "target equality, then the list's order backwards", NEWEST_AUDIT),
    "models.by_id": Shape("models", ID, "equality on _id; the catalog walks it in order", ID),
    "leases.by_id": Shape("leases", ID, "equality on _id (the lease's name)"),
    "claims.by_id": Shape("claims", ID, "equality on _id (namespace and item)"),
    "claims.expired": Shape("claims", (("expires", ASCENDING),), "purge: a range on expires"),
    "claims.ttl": Shape("claims", (("expires_at", ASCENDING),), "the server's TTL monitor (a backstop to purge)"),
    "holds.of_counters": Shape("budget_holds", (("counter", ASCENDING), ("expires", ASCENDING)),
                               "counter equality then an expires range: the live holds of the budgets a "
                               "reservation checks, while Redis is away"),
    "holds.live": Shape("budget_holds", (("expires", ASCENDING),), "an expires range: every live hold "
                        "(reconciliation after an outage), and purge's delete of expired ones"),
    "holds.of_request": Shape("budget_holds", (("request_id", ASCENDING),), "request id equality: a call's "
                              "holds, released when it produced no event"),
}
# The claims TTL index is a backstop for a stopped purge job, so it waits this long past expiry.
# Changing it needs no rebuild: `init` applies a new value with collMod.
CLAIM_TTL_GRACE_SECONDS = 3600
INDEX_OPTIONS: dict[tuple[str, Index], dict[str, Any]] = {
    ("api_keys", QUERIES["keys.by_hash"].index): {"unique": True},
    ("usage_rollups", QUERIES["rollups.by_start"].index): {"unique": True},
    ("usage_daily_users", QUERIES["daily_users.by_start"].index): {"unique": True},
    ("usage_daily_models", QUERIES["daily_models.by_start"].index): {"unique": True},
    ("admin_tokens", QUERIES["tokens.by_hash"].index): {"unique": True},
    ("claims", QUERIES["claims.ttl"].index): {"expireAfterSeconds": CLAIM_TTL_GRACE_SECONDS},
}
# Indexes of earlier releases that a wider one above now serves; `init` drops them, since each
# costs every write and no query uses it.
SUPERSEDED: dict[str, tuple[Index, ...]] = {
    "api_keys": ((("owner", ASCENDING), ("created", ASCENDING)), NEWEST_KEYS),
    "usage_events": ((("ts", ASCENDING),), (("user", ASCENDING), ("ts", ASCENDING)),
                     (("key_id", ASCENDING), ("ts", ASCENDING))),
    "usage_rollups": ((("bucket", ASCENDING), ("key_id", ASCENDING), ("start", ASCENDING)),
                      (("bucket", ASCENDING), ("user", ASCENDING), ("start", ASCENDING))),
    "admin_tokens": ((("created", DESCENDING),),),
    "audit_log": (OLDEST_EVENTS, (("actor", ASCENDING), ("ts", ASCENDING)), (("target", ASCENDING), ("ts", ASCENDING)),
                  (("action", ASCENDING), ("ts", ASCENDING))),
}


def declared_indexes() -> dict[str, list[Index]]:
    """The secondary indexes `init` creates, per collection: those of QUERIES (the _id index always exists)."""
    found: dict[str, list[Index]] = {}
    for shape in QUERIES.values():
        wanted = found.setdefault(shape.collection, [])
        if shape.index != ID and shape.index not in wanted:
            wanted.append(shape.index)
    return found


def events_shape(match: dict[str, Any]) -> str:
    """The query shape of an events `$match`: by its most selective equality (a key, a person, a model)."""
    for field, shape in (("key_id", "events.of_key"), ("user", "events.of_user"), ("model", "events.of_model")):
        if field in match:
            return shape
    return "events.by_ts"
