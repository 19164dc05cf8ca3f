"""The store backends the tests run on: SQLite in tmp_path, and MongoDB (a real server or mongomock).

MongoDB is a real server when `MONGODB_URI` is set (test id `mongo-real`, one throw-away database
per test) and mongomock otherwise (test id `mongo-mongomock`): no MongoDB server can be installed
on the development machines, so the id always says which one ran.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bson
import pytest

from llmgateway.store import Store, open_store
from llmgateway.store.mongo import MongoStore

MONGODB_URI = os.environ.get("MONGODB_URI")
MONGO = "mongo-real" if MONGODB_URI else "mongo-mongomock"
BACKENDS = ["sqlite", MONGO]


@dataclass
class Backend:
    name: str
    store: Store
    raw: Callable[[], bytes]  # everything the backend holds, for the "key never stored" checks
    url: str = ""  # for SQLite: what another process opens


def _accept_sort(method: Callable) -> Callable:
    """mongomock's bulk builder predates pymongo's `sort` argument to bulk updates; drop it (it is never set)."""

    def call(self: object, *args: object, sort: object = None, **kwargs: object) -> object:
        assert sort is None
        return method(self, *args, **kwargs)

    return call


def _mongomock_client(monkeypatch: pytest.MonkeyPatch) -> object:
    import mongomock
    from mongomock.collection import BulkOperationBuilder

    for name in ("add_update", "add_replace"):
        method = getattr(BulkOperationBuilder, name)
        if "sort" not in method.__code__.co_varnames:
            monkeypatch.setattr(BulkOperationBuilder, name, _accept_sort(method))
    return mongomock.MongoClient()


def _sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)

    def raw_file() -> bytes:
        store.close()
        return b"".join(p.read_bytes() for p in tmp_path.glob("store.db*"))

    store.init()
    yield Backend("sqlite", store, raw_file, url)
    store.close()


def _mongo_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    if MONGODB_URI:
        store = MongoStore(MONGODB_URI, database=f"lgw_test_{uuid.uuid4().hex[:12]}")
    else:
        store = MongoStore("mongodb://mongomock/llmgateway", client=_mongomock_client(monkeypatch))

    def raw_documents() -> bytes:
        db = store.db
        return b"".join(bson.encode(d) for name in db.list_collection_names() for d in db[name].find())

    store.init()
    yield Backend(MONGO, store, raw_documents)
    store.client.drop_database(store.db.name)
    store.close()


def open_backend(name: str, tmp_path: Path | None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    """A fresh, initialised backend of that name; dropped after the test."""
    if name == "sqlite":
        assert tmp_path is not None
        yield from _sqlite_backend(tmp_path)
    else:
        yield from _mongo_backend(monkeypatch)
