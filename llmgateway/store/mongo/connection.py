"""The client and database, failures as StoreError, and the hinted reads and pages every part of the store runs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from pymongo import MongoClient
from pymongo.cursor import Cursor
from pymongo.database import Database
from pymongo.errors import AutoReconnect, PyMongoError

from ..base import StoreError
from .schema import QUERIES

DEFAULT_DATABASE = "llmgateway"
# Client options the store sets unless the URL sets them (the URL wins, option by option):
# - serverSelectionTimeoutMS: how long a call waits for a usable server (a primary to write to);
#   the ledger's flush at shutdown must give up within the pod's grace period, so 5 s.
# - connectTimeoutMS: a host that does not accept the connection is given up on quickly.
# - socketTimeoutMS: a reply that never comes (a half-open connection after a node vanished)
#   fails the call instead of blocking a store thread for ever; longer than any single reply.
# - retryWrites / retryReads: said explicitly (they are the driver's defaults): one retry of a
#   single-document write or a read after a failover or a network error.
# - w=majority with wtimeoutMS: a write counts only once a majority holds it, so a failover
#   cannot roll back usage the ledger believed written; a majority that does not answer within
#   5 s is a failure (the ledger spools), not a wait.
# When the URL sets timeoutMS (the driver's one operation timeout), the per-socket and
# write-concern timeouts are left to it.
CLIENT_OPTIONS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 5000,
    "connectTimeoutMS": 5000,
    "socketTimeoutMS": 30000,
    "retryWrites": True,
    "retryReads": True,
    "w": "majority",
    "wTimeoutMS": 5000,
}
LEFT_TO_TIMEOUT_MS = ("socketTimeoutMS", "wTimeoutMS")
# Offsets beyond this are read as a range from the offset's key (see `_seek`), not skipped.
DEEP_OFFSET = 1_000
# A call failed for a reason another try may not meet: a failover, a lost connection.
TRANSIENT = (AutoReconnect,)

P = ParamSpec("P")
R = TypeVar("R")


class ChangeRefused(ValueError):
    """An admin change names a field that may not change (the contract's ValueError)."""


def mapped_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turn any failure of `method` into a StoreError whose message carries no credentials.

    Not only pymongo's errors: bson raises InvalidDocument (a document over 16 MiB) and
    OverflowError (an integer past 64 bits) outside PyMongoError, and a caller such as the usage
    ledger must see every failure as the store's. A refused change stays a ValueError.
    """

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (StoreError, ChangeRefused):
            raise
        except Exception as exc:
            store: MongoConnection = args[0]  # type: ignore[assignment]
            raise store.error(exc) from None

    return call


def retry_once(call: Callable[[], R]) -> R:
    """Run an idempotent write that the driver does not retry itself (a multi-document delete),
    again once after a transient failure."""
    try:
        return call()
    except TRANSIENT:
        return call()
    except PyMongoError as exc:
        if not exc.has_error_label("RetryableWriteError"):
            raise
        return call()


class MongoConnection:
    """The database the store's parts run on, and the reads they share."""

    def __init__(self, url: str, client: MongoClient | None = None, database: str | None = None) -> None:
        parts = urlsplit(url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        password = userinfo.partition(":")[2]
        # Longest first, so the whole user-info goes before the password inside it.
        self._secrets = sorted({userinfo, unquote(userinfo), password, unquote(password)} - {""}, key=len, reverse=True)
        name = database or unquote(parts.path.lstrip("/")) or DEFAULT_DATABASE
        self.where = f"{hosts}/{name}"
        self._owns_client = client is None
        if client is None:
            try:
                client = MongoClient(url, **client_options(parts.query))
            except Exception as exc:
                raise self.error(exc) from None
        self.client = client
        self.db: Database = client[name]

    def error(self, exc: BaseException) -> StoreError:
        """A StoreError for `exc`, with anything from the URL's user-info part blotted out."""
        message = str(exc)
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return StoreError(f"MongoDB store {self.where}: {type(exc).__name__}: {message}")

    def _find(self, shape: str, query: dict[str, Any], projection: dict[str, Any] | None = None) -> Cursor:
        """A cursor for the query shape `shape`, hinted to its index and in its order."""
        found = QUERIES[shape]
        cursor = self.db[found.collection].find(query, projection).hint(list(found.index))
        return cursor.sort(list(found.sort)) if found.sort else cursor

    def _one(self, shape: str, query: dict[str, Any], projection: dict[str, Any] | None = None,
             skip: int = 0) -> dict[str, Any] | None:
        """The first document of the shape's order that matches (after `skip` of them), or None."""
        return next(iter(self._find(shape, query, projection).skip(skip).limit(1)), None)

    def _count(self, shape: str, query: dict[str, Any]) -> int:
        """How many documents match: the collection's metadata count when nothing filters (no scan at all),
        else a count hinted to the shape's index."""
        found = QUERIES[shape]
        collection = self.db[found.collection]
        if not query:
            return collection.estimated_document_count()
        return collection.count_documents(query, hint=list(found.index))

    def _aggregate(self, shape: str, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run `pipeline` (its first stage a $match of the shape) hinted to the shape's index."""
        found = QUERIES[shape]
        return list(self.db[found.collection].aggregate(pipeline, hint=list(found.index), allowDiskUse=True))

    def _page(self, shape: str, query: dict[str, Any], offset: int,
              limit: int | None) -> tuple[list[dict[str, Any]], int]:
        """One page of the shape's order, and how many match in all.

        A deep offset becomes a range (`_seek`). The count is left out when the page itself tells it
        (a short page ends the list), so a rare search walks the index once, not twice.
        """
        if limit is not None and limit <= 0:
            return [], self._count(shape, query)
        offset = max(offset, 0)
        ranged, skip = (query, offset) if offset <= DEEP_OFFSET else self._seek(shape, query, offset)
        page: list[dict[str, Any]] = []
        if ranged is not None:
            cursor = self._find(shape, ranged).skip(skip)
            page = list(cursor.limit(limit) if limit is not None else cursor)
        if (page or offset == 0) and (limit is None or len(page) < limit):
            return page, offset + len(page)
        return page, self._count(shape, query)

    def _seek(self, shape: str, query: dict[str, Any], offset: int) -> tuple[dict[str, Any] | None, int]:
        """The query from the `offset`-th entry of the shape's order on, and how many entries to skip there.

        The entry is found by skipping over index keys alone (the projection holds only the sort
        fields, which the index holds: a covered read, no document fetched); the page is then a
        range read from its sort key. Entries tied with it on the first sort field that come before
        it are counted (a range count) and skipped. None if the offset is past the end.
        """
        order = QUERIES[shape].sort
        projection = {name: True for name, _ in order} | ({} if order[0][0] == "_id" or order[-1][0] == "_id"
                                                           else {"_id": False})
        boundary = self._one(shape, query, projection, offset)
        if boundary is None:
            return None, 0
        (first, direction), rest = order[0], order[1:]
        ranged = all_of([query, {first: {"$lte" if direction < 0 else "$gte": boundary[first]}}])
        if not rest:
            return ranged, 0
        (second, then), = rest
        before = {first: boundary[first], second: {"$lt" if then > 0 else "$gt": boundary[second]}}
        return ranged, self._count(shape, all_of([query, before]))


def time_match(
    column: str, since: float, until: float | None, user: str | None = None, key_id: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The query for a [since, until) range on `column` plus the optional equality filters."""
    span: dict[str, float] = {"$gte": since}
    if until is not None:
        span["$lt"] = until
    query: dict[str, Any] = {column: span}
    for name, value in (("user", user), ("key_id", key_id), ("model", model)):
        if value is not None:
            query[name] = value
    return query


def time_span(column: str, since: float, until: float | None) -> dict[str, Any]:
    """As `time_match` without filters, but empty for the whole time line (an unfiltered list counts
    from metadata)."""
    return time_match(column, since, until) if since > 0 or until is not None else {}


def all_of(terms: list[dict[str, Any]]) -> dict[str, Any]:
    """The conjunction of the non-empty `terms` (empty for none: everything matches)."""
    terms = [term for term in terms if term]
    return {"$and": terms} if len(terms) > 1 else terms[0] if terms else {}


def client_options(query: str) -> dict[str, Any]:
    """CLIENT_OPTIONS less those the URL's query string sets (matched without regard to case, as the driver does)."""
    given = {option.lower() for option in parse_qs(query)}
    left = [n for n in CLIENT_OPTIONS if n.lower() not in given]
    if "timeoutms" in given:
        left = [n for n in left if n not in LEFT_TO_TIMEOUT_MS]
    return {name: CLIENT_OPTIONS[name] for name in left}
