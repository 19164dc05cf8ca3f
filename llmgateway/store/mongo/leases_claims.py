"""Job leases, budget holds and one-time claims, on MongoDB."""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from pymongo import ReplaceOne
from pymongo.errors import DuplicateKeyError

from ..base import HOLD_FIELDS, BudgetHold, StoreError
from .connection import MongoConnection, mapped_errors, retry_once
from .schema import events_shape

# Budget holds take a short lock per budget counter (a lease document): MongoDB has no
# multi-document atomicity without a replica set, and a hold reads many events, then writes.
HOLD_LOCK_SECONDS = 5.0
HOLD_LOCK_WAIT_SECONDS = 5.0


class MongoLeasesAndClaims(MongoConnection):
    """The `LeasesAndClaims` part of the MongoDB store."""

    @mapped_errors
    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = time.time()
        return self._take(
            self.db.leases, {"_id": name, "$or": [{"until": {"$lte": now}}, {"holder": holder}]},
            {"holder": holder, "until": now + ttl},
        )

    @mapped_errors
    def reserve_budgets(self, request_id: str, holds: list[BudgetHold], now: float,
                        expires: float) -> tuple[int, list[int]]:
        locks = sorted({"hold:" + hold.counter for hold in holds})
        token = secrets.token_hex(8)
        taken: list[str] = []
        try:
            for name in locks:
                self._lock(name, token)
                taken.append(name)
            live = self._live_holds(now, [hold.counter for hold in holds])
            used = [self._stored_use(hold) + sum(live.get(hold.counter, {}).values()) for hold in holds]
            for i, hold in enumerate(holds):
                if used[i] + hold.amount > hold.limit:
                    return i, used
            self.db.budget_holds.bulk_write([
                ReplaceOne({"_id": f"{request_id} {hold.counter}"},
                           {"request_id": request_id, "counter": hold.counter, "amount": hold.amount,
                            "expires": expires}, upsert=True)
                for hold in holds
            ])
            return -1, used
        finally:
            for name in taken:
                self.db.leases.delete_one({"_id": name, "holder": token})

    def _lock(self, name: str, token: str) -> None:
        deadline = time.monotonic() + HOLD_LOCK_WAIT_SECONDS
        while True:
            now = time.time()
            if self._take(self.db.leases, {"_id": name, "until": {"$lte": now}},
                          {"holder": token, "until": now + HOLD_LOCK_SECONDS}):
                return
            if time.monotonic() > deadline:
                raise StoreError(f"budget lock {name} stayed busy for {HOLD_LOCK_WAIT_SECONDS:g} s")
            time.sleep(0.002)

    def _stored_use(self, hold: BudgetHold) -> int:
        if hold.field not in HOLD_FIELDS:
            raise StoreError(f"cannot hold a budget on {hold.field!r}")
        match: dict[str, Any] = {hold.field: hold.who, "ts": {"$gte": hold.since}}
        if hold.tokens:
            if not hold.models:
                return 0
            match["model"] = {"$in": list(hold.models)}
            measure: Any = {"$add": ["$prompt_tokens", "$completion_tokens"]}
        else:
            measure = "$cost"
        rows = self._aggregate(events_shape(match), [{"$match": match},
                                                      {"$group": {"_id": None, "total": {"$sum": measure}}}])
        return round((rows[0]["total"] if rows else 0) * hold.scale)

    def _live_holds(self, now: float, counters: list[str] | None = None) -> dict[str, dict[str, int]]:
        """Unexpired holds whose events are not stored: {counter: {request id: amount}}."""
        query: dict[str, Any] = {"expires": {"$gt": now}}
        if counters is not None:
            query["counter"] = {"$in": counters}
        found = list(self._find("holds.live" if counters is None else "holds.of_counters", query))
        ids = list({d["request_id"] for d in found})
        stored = {d["_id"] for d in self._find("events.by_id", {"_id": {"$in": ids}}, {"_id": True})} if ids else set()
        live: dict[str, dict[str, int]] = {}
        for d in found:
            if d["request_id"] not in stored:
                live.setdefault(d["counter"], {})[d["request_id"]] = d["amount"]
        return live

    @mapped_errors
    def release_budgets(self, request_id: str) -> None:
        self.db.budget_holds.delete_many({"request_id": request_id})

    @mapped_errors
    def held_budgets(self, now: float) -> dict[str, int]:
        return {counter: sum(held.values()) for counter, held in self._live_holds(now).items()}

    @mapped_errors
    def purge_holds(self, now: float) -> int:
        gone = self.db.budget_holds.delete_many({"expires": {"$lte": now}}).deleted_count
        ids = list({d["request_id"] for d in self._find("holds.of_request", {}, {"request_id": True, "_id": False})})
        if ids:
            stored = [d["_id"] for d in self._find("events.by_id", {"_id": {"$in": ids}}, {"_id": True})]
            gone += self.db.budget_holds.delete_many({"request_id": {"$in": stored}}).deleted_count
        return gone

    @mapped_errors
    def claim_once(self, namespace: str, item_id: str, expires: float) -> bool:
        return self._take(
            self.db.claims, {"_id": _claim_id(namespace, item_id), "expires": {"$lte": time.time()}},
            {"namespace": namespace, "item_id": item_id, "expires": expires,
             "expires_at": datetime.fromtimestamp(expires, UTC)},
        )

    @staticmethod
    def _take(collection: Any, free: dict[str, Any], values: dict[str, Any]) -> bool:
        """Set `values` on the document if `free` matches it, or create it; False if it exists and is not free.

        Atomic: when the document exists but `free` does not match it, the upsert's insert collides on _id.
        """
        try:
            collection.update_one(free, {"$set": values}, upsert=True)
        except DuplicateKeyError:
            return False
        return True

    @mapped_errors
    def is_claimed(self, namespace: str, item_id: str) -> bool:
        live = {"_id": _claim_id(namespace, item_id), "expires": {"$gt": time.time()}}
        return self._one("claims.by_id", live, {"_id": True}) is not None

    @mapped_errors
    def purge_claims(self, now: float) -> int:
        return retry_once(lambda: self.db.claims.delete_many({"expires": {"$lte": now}})).deleted_count


def _claim_id(namespace: str, item_id: str) -> str:
    return json.dumps([namespace, item_id])
