"""`python -m bench.admin_scale`: the admin API's pages on a store the size of a large site.

The requirement it measures: with 300,000 keys and 1,000,000 usage events in the store, the admin
list and usage pages answer in under a second each. It seeds a SQLite store of that size (the
real schema, from `store.init()`; rows bulk-inserted with sqlite3; rollups built by the store's own
`rollup_usage`, as `llmgateway rollups rebuild --since 91d` does), starts the real gateway on it
(pinned to one core, on 127.0.0.1 only, upstreams that are never called), and times the REST calls
behind each admin UI page from one client thread on another core: each call alone, and the usage
page's three calls at once, as a browser sends them. Every answer is checked against the store
(status 200, totals equal to counts read straight from the file), so a fast wrong answer fails
the run instead of passing it.

It prints a Markdown table (p50/p95/max per page and variant, the gateway's CPU per page), one
verdict per page (p95 under 1 s or not), the store's size and the gateway's memory, and writes
every figure as JSON. The seeded store is kept (`--store`) and reused by the next run while it
holds the same counts and is less than a day old; `--reseed` makes it afresh. The run has a time
bound (`--time-limit`), and the gateway is stopped at the end, on error, Ctrl-C or SIGTERM.
Exit status: 0 when every page is under the budget, 1 when one is not, 2 when the run failed.

`--mongo-shapes` measures nothing: it copies the seeded store into the MongoDB store on mongomock
(no server is needed; mongomock comes with the test dependencies), runs the admin core behind each
page and variant in-process, and reports the query shapes each issues and the index that serves
each, by the MongoDB store's query table (`llmgateway.store.mongo.QUERIES`): the list to take to
an explain() review of a real server. A small scale (`--users 50 --keys 300 --events 3000`) does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import dataclasses
import hashlib
import http.client
import inspect
import io
import itertools
import json
import os
import platform
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from bench.run import REPO, BenchError, Children, free_port, git_state, say, terminate_on_sigterm

from . import load

PREFIX = "/admin/api/v1"
DEFAULT_STORE = Path("/tmp/llmgw-admin-bench/gateway.db")
BUDGET_MS = 1000.0
START_TIMEOUT = 60.0
BATCH = 50_000
# A store older than this is seeded again: its last days would hold no events, so the usage
# reports' live part (raw events since yesterday) would be cheaper than on a site in use.
REUSE_HOURS = 24.0
# Models of the seeded site: id, prompt and completion price per 1k tokens, share of the traffic
# of keys that may use every model, endpoint.
MODELS = (
    ("llama-3-8b", 0.0002, 0.0004, 30, "/v1/chat/completions"),
    ("llama-3-70b", 0.002, 0.004, 25, "/v1/chat/completions"),
    ("mixtral-8x7b", 0.0008, 0.0012, 15, "/v1/chat/completions"),
    ("qwen2-72b", 0.0015, 0.003, 12, "/v1/chat/completions"),
    ("codellama-34b", 0.001, 0.002, 13, "/v1/completions"),
    ("bge-m3", 0.00002, 0.0, 5, "/v1/embeddings"),
)
FIRST = ("Ada", "Alan", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "John", "Radia",
         "Edsger", "Sophie", "Tim", "Katherine", "Niklaus")
LAST = ("Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie", "Allen",
        "McCarthy", "Perlman", "Dijkstra", "Wilson", "Berners-Lee", "Johnson", "Wirth")
KEY_NAMES = ("laptop", "notebook", "jupyter", "ci", "vscode", "agent", "eval", "script", "thesis", "lab",
             "pipeline", "chatbot", "batch", "test", "workstation", "cluster")
# Pareto shape of "who uses it": about 80% of the weight in 20% of the population.
PARETO_ALPHA = 1.16
# No one person's weight for keys above this: most have a few keys (median 7), some hundreds (at
# most about a thousand), not a sixth of the site's keys as an uncapped draw can give.
KEY_WEIGHT_CAP = 300.0
HOT_SHARE = 0.8   # share of events from the Pareto-weighted hot keys; the rest uniform over all keys
HOT_KEYS = 0.2    # share of keys that are hot
SEEDED_TABLES = ("users", "api_keys", "usage_events", "audit_log")
# Changes whenever the generated data changes, so that an older seeded store is not reused.
SEED_FORMAT = 2


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big the seeded site is."""

    users: int
    keys: int
    events: int
    days: int
    random_seed: int


class Deadline:
    """The run's time bound: SIGALRM raises BenchError in the main thread, wherever it is."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> Deadline:
        def expire(signum: int, frame: object) -> None:
            raise BenchError(f"the run took longer than --time-limit {self.seconds:g} s; stopped")

        self.previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)


# --- seeding ---------------------------------------------------------------------------------


def sidecar(path: Path) -> Path:
    """Where the seeding's parameters and timings are kept beside the store, for reuse."""
    return path.with_name(path.name + ".seed.json")


def counts(path: Path) -> dict[str, int]:
    """Rows per seeded table, plus the rollup tables, read straight from the file."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in (*SEEDED_TABLES, "usage_rollups", "usage_daily_users")}


def schema(path: Path) -> set[tuple[str, str, str]]:
    """The tables and indexes a store file has (type, name, SQL), to tell whether it is the current schema."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return set(conn.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                                "AND name NOT LIKE 'sqlite_%'").fetchall())


def current_schema() -> set[tuple[str, str, str]]:
    """What `init()` of this checkout's SQLite store makes in an empty file."""
    from llmgateway.store import open_store

    with tempfile.TemporaryDirectory(prefix="llmgw-schema-") as tmp:
        store = open_store(f"sqlite:///{tmp}/empty.db")
        store.init()
        store.close()
        return schema(Path(tmp) / "empty.db")


def rollup_code() -> str:
    """A digest of the SQLite store's rollup code: rollups built by other code are rebuilt, not reused."""
    from llmgateway.store.sqlite import SQLiteStore

    return hashlib.sha256(inspect.getsource(SQLiteStore.rollup_usage).encode()).hexdigest()[:16]


def reusable(path: Path, scale: Scale) -> tuple[dict[str, Any] | None, str]:
    """The recorded seeding if the store at `path` can be measured as it is; else None and why not."""
    if not path.exists() or not sidecar(path).exists():
        return None, f"no seeded store at {path}"
    try:
        seeded = json.loads(sidecar(path).read_text(encoding="utf-8"))
        found = counts(path)
    except (OSError, ValueError, sqlite3.Error) as exc:
        return None, f"cannot read the seeded store ({exc})"
    if seeded.get("format") != SEED_FORMAT:
        return None, "the store was seeded by an older version of this benchmark"
    if seeded.get("scale") != dataclasses.asdict(scale):
        return None, f"the store was seeded with {seeded.get('scale')}, not {dataclasses.asdict(scale)}"
    wanted = {"users": scale.users, "api_keys": scale.keys, "usage_events": scale.events}
    wrong = {t: (found[t], n) for t, n in wanted.items() if found[t] != n}
    if wrong or not found["usage_rollups"] or not found["usage_daily_users"]:
        return None, f"the store's counts changed since it was seeded: {found}"
    if seeded.get("rollup_code") != rollup_code():
        return None, "the store's rollup code changed since the store was seeded"
    if schema(path) != current_schema():
        return None, "the store's schema (tables, indexes) differs from what this checkout's init() makes"
    age_h = (time.time() - seeded["now"]) / 3600
    if age_h > REUSE_HOURS:
        return None, f"the store was seeded {age_h:.0f} h ago (more than {REUSE_HOURS:g} h)"
    return seeded, f"reusing {path} (seeded {age_h:.1f} h ago in {seeded['seconds']['total']:.0f} s)"


def pareto_cum(rng: random.Random, n: int, cap: float = float("inf")) -> list[float]:
    """Cumulative Pareto weights (each at most `cap`) for n items: a few items get most of the draws."""
    return list(itertools.accumulate(min(cap, rng.paretovariate(PARETO_ALPHA)) for _ in range(n)))


def insert(conn: sqlite3.Connection, table: str, columns: str, rows: Iterator[tuple]) -> int:
    """Bulk insert, one transaction per BATCH rows (each batch is one executemany)."""
    sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(columns.split(',')))})"
    done = 0
    while batch := list(itertools.islice(rows, BATCH)):
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
        done += len(batch)
    return done


def seed(path: Path, scale: Scale) -> dict[str, Any]:
    """Make the store: real schema, bulk rows, the store's own rollups. Returns what was done, timed.

    Secondary indexes of the seeded tables are dropped for the bulk insert and made again by a
    second `init()` (the schema's CREATE INDEX IF NOT EXISTS): the same indexes, built in one pass.
    """
    from llmgateway.store import BUCKETS, open_store

    for suffix in ("", "-wal", "-shm", ".seed.json"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + suffix).unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(scale.random_seed)
    now = time.time()
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 2)
        say(f"  {name}: {timings[name]:.1f} s")
        return time.perf_counter()

    store = open_store(f"sqlite:///{path}")
    store.init()
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    marks = ",".join("?" * len(SEEDED_TABLES))
    indexes = conn.execute(f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                           f"AND tbl_name IN ({marks}) ORDER BY name", SEEDED_TABLES).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    t = time.perf_counter()

    # People: a few admins, some disabled, most have accepted the terms.
    user_created = [now - rng.uniform(0, 730) * 86400 for _ in range(scale.users)]
    usernames = [f"user{i:05d}" for i in range(scale.users)]

    def users() -> Iterator[tuple]:
        for i, name in enumerate(usernames):
            first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST)) % len(LAST)]
            login = now - rng.uniform(0, 60) * 86400 if rng.random() < 0.8 else None
            yield (name, f"{first} {last}", f"{first.lower()}.{last.lower()}{i}@example.org", int(i < 5),
                   user_created[i], login, "1" if login else None, "{}", int(5 <= i < 15), int(i % 97 == 96))

    insert(conn, "users", "username, display_name, email, is_admin, created, last_login, agreement_version, "
           "limits, admin_granted, disabled", users())
    t = lap("users", t)

    # Keys: one per person, the rest to people drawn by Pareto weight (most have a few, some many).
    weights = pareto_cum(rng, scale.users, KEY_WEIGHT_CAP)
    owners = list(range(scale.users)) + rng.choices(range(scale.users), cum_weights=weights, k=scale.keys - scale.users)
    model_ids = [m[0] for m in MODELS]
    keys: list[tuple] = []
    for n, owner in enumerate(owners):
        created = rng.uniform(user_created[owner], now)
        digest = hashlib.sha256(f"bench-key-{scale.random_seed}-{n}".encode()).digest()
        prefix = "sk-lgw-" + base64.urlsafe_b64encode(digest).decode()[:6]
        expires = created + rng.uniform(30, 365) * 86400 if rng.random() < 0.15 else None
        allowed = sorted(rng.sample(model_ids, rng.randint(1, 3))) if rng.random() < 0.25 else []
        keys.append((f"key_{digest[-8:].hex()}", usernames[owner], f"{rng.choice(KEY_NAMES)}-{rng.randint(1, 99)}",
                     digest.hex(), prefix, created, expires, int(rng.random() >= 0.08),
                     now - rng.uniform(0, 90) * 86400 if rng.random() < 0.5 else None, json.dumps(allowed), "{}"))
    keys.sort(key=lambda k: k[5])
    insert(conn, "api_keys", "id, owner, name, hash, prefix, created, expires, active, last_used, models, limits",
           iter(keys))
    t = lap("api_keys", t)

    # The audit log: each key's creation and revocation, each acceptance of the terms.
    def audit() -> Iterator[tuple]:
        for k in keys:
            ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            yield (k[5], k[1], "portal", ip, "key.create", k[0],
                   json.dumps({"owner": k[1], "name": k[2], "models": json.loads(k[9]), "expires": k[6]}))
            if not k[7]:
                admin = rng.random() < 0.1
                yield (rng.uniform(k[5], now), "bootstrap-token" if admin else k[1], "api" if admin else "portal",
                       ip, "key.revoke", k[0], json.dumps({"owner": k[1]}))
        for i, name in enumerate(usernames):
            if rng.random() < 0.8:
                yield (rng.uniform(user_created[i], now), name, "portal", "10.0.0.1", "terms.accept", name,
                       json.dumps({"version": "1"}))

    entries = sorted(audit())
    insert(conn, "audit_log", "ts, actor, via, source, action, target, details", iter(entries))
    t = lap("audit_log", t)

    # Events over the last `days` days, in time order as the ledger appends them: 80% from a hot
    # fifth of the keys (Pareto-weighted), 20% from any key; the user is the key's owner.
    hot = rng.sample(range(len(keys)), max(1, int(len(keys) * HOT_KEYS)))
    hot_cum = pareto_cum(rng, len(hot))
    model_cum = list(itertools.accumulate(m[3] for m in MODELS))
    prices = {m[0]: (m[1], m[2], m[4]) for m in MODELS}
    allowed_of = [json.loads(k[9]) for k in keys]
    replicas = [os.urandom(8).hex() for _ in range(4)]
    span = scale.days * 86400
    stamps = sorted(now - span + rng.random() * span for _ in range(scale.events))

    def events() -> Iterator[tuple]:
        for n, ts in enumerate(stamps):
            i = rng.choices(hot, cum_weights=hot_cum)[0] if rng.random() < HOT_SHARE else rng.randrange(len(keys))
            model = rng.choice(allowed_of[i]) if allowed_of[i] else rng.choices(model_ids, cum_weights=model_cum)[0]
            prompt_price, completion_price, endpoint = prices[model]
            embedding = endpoint == "/v1/embeddings"
            prompt = int(rng.lognormvariate(6.0, 1.0)) + 1
            completion = 0 if embedding else int(rng.lognormvariate(5.0, 1.0)) + 1
            roll = rng.random()
            status = 200 if roll < 0.96 else 429 if roll < 0.98 else 502
            if status == 429:
                prompt = completion = 0
            elif status == 502:
                completion = 0
            cost = round((prompt * prompt_price + completion * completion_price) / 1000, 8)
            yield (f"{replicas[n % len(replicas)]}{n:012x}", ts, keys[i][0], keys[i][1], model, endpoint, prompt,
                   completion, cost, status, round(rng.lognormvariate(6.5, 0.8), 1),
                   int(not embedding and rng.random() < 0.6), int(rng.random() < 0.02))

    insert(conn, "usage_events", "request_id, ts, key_id, user, model, endpoint, prompt_tokens, completion_tokens, "
           "cost, status, latency_ms, streamed, estimated", events())
    t = lap("usage_events", t)
    conn.close()

    store = open_store(f"sqlite:///{path}")
    store.init()
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as check:
        remade = check.execute(f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                               f"AND tbl_name IN ({marks}) ORDER BY name", SEEDED_TABLES).fetchall()
    if remade != indexes:
        raise BenchError(f"init() did not make the same indexes again: {indexes} != {remade}")
    t = lap("indexes (init)", t)

    # The rollups, as `llmgateway rollups rebuild --since 91d` builds them.
    since, until = time.time() - (scale.days + 1) * 86400, time.time()
    rollup_rows = {}
    for bucket, size in BUCKETS.items():
        rollup_rows[bucket] = store.rollup_usage(bucket, since // size * size, until)
        t = lap(f"rollups {bucket} ({rollup_rows[bucket]} rows)", t)
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    t = lap("checkpoint", t)
    timings["total"] = round(time.perf_counter() - started, 2)
    seeded = {"format": SEED_FORMAT, "scale": dataclasses.asdict(scale), "now": now, "seconds": timings,
              "rollup_rows": rollup_rows, "rollup_code": rollup_code(), "counts": counts(path)}
    sidecar(path).write_text(json.dumps(seeded, indent=2) + "\n", encoding="utf-8")
    return seeded


# --- what the answers must say ---------------------------------------------------------------


def midnight(day: date) -> float:
    """Unix time of a UTC day's start."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


class Facts:
    """What the store holds, read straight from the file (not through the store's queries), to
    check the gateway's answers against."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.windows: dict[tuple[str, str], dict[str, int]] = {}
        with self.connect() as conn:
            self.counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in SEEDED_TABLES}
            self.busy_owner, self.busy_owner_keys = conn.execute(
                "SELECT owner, count(*) AS n FROM api_keys GROUP BY owner ORDER BY n DESC, owner LIMIT 1").fetchone()
            self.revoked = conn.execute("SELECT count(*) FROM api_keys WHERE active = 0").fetchone()[0]
            keys = conn.execute("SELECT id, name, prefix, models FROM api_keys ORDER BY created").fetchall()
            usernames = conn.execute("SELECT username, display_name, email FROM users").fetchall()
            self.busy_key, self.busy_key_events = conn.execute(
                "SELECT key_id, count(*) AS n FROM usage_events GROUP BY key_id ORDER BY n DESC LIMIT 1").fetchone()
            self.busy_user, self.busy_user_events = conn.execute(
                "SELECT user, count(*) AS n FROM usage_events GROUP BY user ORDER BY n DESC LIMIT 1").fetchone()
        # A key's display prefix, as an admin pastes it from a complaint; a username fragment.
        self.key_search = keys[len(keys) // 3][2]
        self.key_search_total = sum(1 for k in keys if self.key_search.lower() in " ".join(k[:3]).lower())
        self.model = MODELS[2][0]
        self.model_keys = sum(1 for k in keys if self.model in json.loads(k[3]) or k[3] == "[]")
        self.user_search = sorted(u[0] for u in usernames)[len(usernames) // 2][:-1]
        self.user_search_total = sum(1 for u in usernames if self.user_search in " ".join(u).lower())

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection to the store (the gateway may hold it open too: WAL)."""
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            yield conn
        finally:
            conn.close()

    def window(self, since: str, until: str) -> dict[str, int]:
        """Events in [since, until] (whole UTC days, as the API reads them), and their distinct groups;
        read once per range (checks run after every timed call)."""
        if (since, until) not in self.windows:
            lo, hi = midnight(date.fromisoformat(since)), midnight(date.fromisoformat(until)) + 86400
            with self.connect() as conn:
                row = conn.execute(
                    "SELECT count(*), count(DISTINCT user), count(DISTINCT key_id), count(DISTINCT model), "
                    "count(DISTINCT CAST(ts / 86400 AS INTEGER)) FROM usage_events WHERE ts >= ? AND ts < ?",
                    (lo, hi)).fetchone()
            self.windows[since, until] = dict(zip(("requests", "user", "key", "model", "day"), row, strict=True))
        return self.windows[since, until]


# --- the client ------------------------------------------------------------------------------


@dataclasses.dataclass
class Answer:
    """One HTTP answer: status, body, and the seconds from sending to the last byte."""

    path: str
    status: int
    body: bytes
    seconds: float

    def json(self) -> Any:
        """The body as JSON; a BenchError naming the call if it is not."""
        try:
            return json.loads(self.body)
        except ValueError:
            raise BenchError(f"GET {self.path}: not JSON: {self.body[:200]!r}") from None


class Client:
    """One keep-alive HTTP/1.1 connection to the gateway, as a browser tab holds one."""

    def __init__(self, port: int, token: str, timeout: float) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def get(self, path: str) -> Answer:
        """GET PREFIX + path, timed to the last byte of the body."""
        started = time.perf_counter()
        try:
            self.conn.request("GET", PREFIX + path, headers=self.headers)
            answer = self.conn.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            raise BenchError(f"GET {PREFIX}{path}: {type(exc).__name__}: {exc}") from None
        return Answer(path, answer.status, body, time.perf_counter() - started)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


@dataclasses.dataclass
class Case:
    """One thing timed: the calls of a page (several at once when there are several), and what
    their answers must say."""

    page: str
    name: str
    paths: tuple[str, ...]
    check: Callable[[list[Answer]], None]


def expect(condition: bool, answer: Answer, what: str) -> None:
    """Fail loudly, naming the call and the part of its answer that was wrong."""
    if not condition:
        raise BenchError(f"GET {PREFIX}{answer.path}: {what}; answer: {answer.body[:300]!r}")


def paged(total: int, offset: int = 0, limit: int = 50,
          item: Callable[[dict[str, Any]], bool] | None = None) -> Callable[[list[Answer]], None]:
    """The check of a paged list: 200, the right total, a full page, every item matching."""
    def check(answers: list[Answer]) -> None:
        for a in answers:
            expect(a.status == 200, a, f"status {a.status}")
            body = a.json()
            expect(body.get("total") == total, a, f"total {body.get('total')} != {total} in the store")
            want = max(0, min(limit, total - offset))
            expect(len(body.get("items", ())) == want, a, f"{len(body.get('items', ()))} items, not {want}")
            expect(item is None or all(item(i) for i in body["items"]), a, "an item does not match the filter")
    return check


def report(facts: Facts, group: str, rows: int | None = None,
           order: str | None = None) -> Callable[[list[Answer]], None]:
    """The check of a usage report: 200, totals equal to the events in its range, the right number of
    groups, the page in order."""
    def check(answers: list[Answer]) -> None:
        for a in answers:
            expect(a.status == 200, a, f"status {a.status}")
            body = a.json()
            window = facts.window(body["since"], body["until"])
            got = body.get("totals", {}).get("requests")
            expect(got == window["requests"], a, f"totals.requests {got} != {window['requests']} events in range")
            expect(body.get("total") == window[group], a, f"{body.get('total')} groups, not {window[group]}")
            want = min(rows or 50, window[group])
            expect(len(body.get("rows", ())) == want, a, f"{len(body.get('rows', ()))} rows, not {want}")
            if order == "cost":
                costs = [r["cost"] for r in body["rows"]]
                expect(costs == sorted(costs, reverse=True), a, "rows not by cost, highest first")
    return check


def usage_csv(facts: Facts, since: str, until: str) -> Callable[[list[Answer]], None]:
    """The check of the CSV export by user: a header, one row per person with events, the sum."""
    def check(answers: list[Answer]) -> None:
        for a in answers:
            expect(a.status == 200, a, f"status {a.status}")
            rows = list(csv.DictReader(io.StringIO(a.body.decode())))
            window = facts.window(since, until)
            expect(len(rows) == window["user"], a, f"{len(rows)} CSV rows, not {window['user']}")
            total = sum(int(r["requests"]) for r in rows)
            expect(total == window["requests"], a, f"CSV requests sum {total} != {window['requests']}")
    return check


def models_listed(answers: list[Answer]) -> None:
    """The models page names every configured model."""
    for a in answers:
        expect(a.status == 200, a, f"status {a.status}")
        text = a.body.decode()
        expect(all(f'"{m[0]}"' in text for m in MODELS), a, "a configured model is missing")


def cases(facts: Facts, today: date, days: int) -> list[Case]:
    """Every page and variant measured, each with its check."""
    n = facts.counts
    since30, since_all = (today - timedelta(days=29)).isoformat(), (today - timedelta(days=days)).isoformat()
    mid = n["api_keys"] // 2

    def q(path: str, **args: Any) -> str:
        return f"{path}?{urlencode(args)}"

    day, model = q("/usage", by="day"), q("/usage", by="model")
    top = q("/usage", by="user", order="cost", limit=10)
    day_all, model_all = q("/usage", by="day", since=since_all), q("/usage", by="model", since=since_all)
    top_all = q("/usage", by="user", order="cost", limit=10, since=since_all)
    usage_page = [report(facts, "day"), report(facts, "model"), report(facts, "user", 10, "cost")]

    def together(checks: list[Callable[[list[Answer]], None]]) -> Callable[[list[Answer]], None]:
        def check(answers: list[Answer]) -> None:
            for c, a in zip(checks, answers, strict=True):
                c([a])
        return check

    return [
        Case("Keys", "page 1", (q("/keys", limit=50),), paged(n["api_keys"])),
        Case("Keys", f"offset {mid:,}", (q("/keys", offset=mid, limit=50),), paged(n["api_keys"], mid)),
        Case("Keys", f"user= (owner of {facts.busy_owner_keys:,} keys)", (q("/keys", user=facts.busy_owner),),
             paged(facts.busy_owner_keys, item=lambda i: i["owner"] == facts.busy_owner)),
        Case("Keys", f"status=revoked ({facts.revoked:,})", (q("/keys", status="revoked"),),
             paged(facts.revoked, item=lambda i: i["status"] == "revoked")),
        Case("Keys", f"search= (a prefix, {facts.key_search_total} found)", (q("/keys", search=facts.key_search),),
             paged(facts.key_search_total)),
        Case("Keys", f"model= ({facts.model_keys:,})", (q("/keys", model=facts.model),),
             paged(facts.model_keys, item=lambda i: not i["models"] or facts.model in i["models"])),
        Case("Users", "page 1", (q("/users", limit=50),), paged(n["users"])),
        Case("Users", f"search= ({facts.user_search_total} found)", (q("/users", search=facts.user_search),),
             paged(facts.user_search_total)),
        Case("Usage", "page, 30 days (3 calls at once)", (day, model, top), together(usage_page)),
        Case("Usage", f"page, {days + 1} days (3 calls at once)", (day_all, model_all, top_all), together(usage_page)),
        Case("Usage", "by=day, 30 days", (day,), report(facts, "day")),
        Case("Usage", "by=model, 30 days", (model,), report(facts, "model")),
        Case("Usage", "by=user order=cost limit=10, 30 days", (top,), report(facts, "user", 10, "cost")),
        Case("Usage", f"by=day, {days + 1} days", (day_all,), report(facts, "day")),
        Case("Usage", f"by=model, {days + 1} days", (model_all,), report(facts, "model")),
        Case("Usage", f"by=user order=cost limit=10, {days + 1} days", (top_all,), report(facts, "user", 10, "cost")),
        Case("Usage", "by=key order=cost limit=50, 30 days", (q("/usage", by="key", order="cost", limit=50),),
             report(facts, "key", 50, "cost")),
        Case("Usage", "CSV by=user, 30 days", (q("/usage", by="user", format="csv"),),
             usage_csv(facts, since30, today.isoformat())),
        Case("Events", f"key= (busiest, {facts.busy_key_events:,} events)", (q("/usage/events", key=facts.busy_key),),
             paged(facts.busy_key_events)),
        Case("Events", f"user= (busiest, {facts.busy_user_events:,} events)",
             (q("/usage/events", user=facts.busy_user),), paged(facts.busy_user_events)),
        Case("Audit", "page 1", (q("/audit", limit=50),), paged(n["audit_log"])),
        Case("Models", "list", ("/models",), models_listed),
    ]


def measure(case: Case, client: Client, pool: ThreadPoolExecutor, clients: Callable[[], Client], gw_pid: int,
            warmup: int, repeat: int) -> dict[str, Any]:
    """Time a case `repeat` times after `warmup` untimed runs; check every answer (outside the timing)."""
    times: list[float] = []
    cpu = 0.0
    size = 0
    for i in range(warmup + repeat):
        before = load.cpu_seconds(gw_pid)
        started = time.perf_counter()
        if len(case.paths) == 1:
            answers = [client.get(case.paths[0])]
        else:
            answers = list(pool.map(lambda p: clients().get(p), case.paths))
        took = time.perf_counter() - started
        used = load.cpu_seconds(gw_pid) - before
        case.check(answers)
        if i >= warmup:
            times.append(took)
            cpu += used
            size = sum(len(a.body) for a in answers)
    ordered = sorted(times)
    return {
        "page": case.page, "case": case.name, "calls": list(case.paths), "n": len(times),
        "p50_ms": round(load.percentile(ordered, 50) * 1e3, 1),
        "p95_ms": round(load.percentile(ordered, 95) * 1e3, 1),
        "max_ms": round(ordered[-1] * 1e3, 1),
        "gateway_cpu_ms": round(cpu / len(times) * 1e3, 1),
        "bytes": size,
    }


# --- the gateway -----------------------------------------------------------------------------


def gateway_config(workdir: Path, port: int, store: Path) -> Path:
    """The gateway's config: the seeded store, the seeded models (upstreams never called), no rollup or
    retention run while measuring (retention would delete the oldest seeded day)."""
    models = "".join(
        f'[[models]]\nid = "{m}"\nupstreams = ["http://127.0.0.1:9"]\n'
        f"prompt_cost_per_1k = {p}\ncompletion_cost_per_1k = {c}\n\n"
        for m, p, c, _, _ in MODELS
    )
    path = workdir / "gateway.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ndrain_seconds = 1\n\n'
        f'[store]\nurl = "sqlite:///{store}"\n\n'
        f'[usage]\nspool_dir = "{workdir}/spool"\n\n'
        "[jobs]\nrollup_interval_seconds = 86400\nretention_days = 0\n\n" + models,
        encoding="utf-8",
    )
    return path


def start_gateway(children: Children, python: str, workdir: Path, store: Path, token: str,
                  cpu: int | None) -> tuple[subprocess.Popen, int]:
    """The gateway from this checkout on the seeded store; waits for GET /healthz to answer 200."""
    port = free_port()
    config = gateway_config(workdir, port, store)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMGW_")} | {"LLMGW_ADMIN_TOKEN": token}
    cmd = [python, "-m", "llmgateway", "serve", "--config", str(config)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    with (workdir / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log, env=env, start_new_session=True)
    children.procs.append(proc)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the gateway exited with status {proc.returncode}:\n{children.log_tail('gateway')}")
        if healthy(port):
            return proc, port
        time.sleep(0.2)
    raise BenchError(f"the gateway did not answer /healthz in {START_TIMEOUT:g} s:\n{children.log_tail('gateway')}")


def healthy(port: int) -> bool:
    """GET /healthz answers 200 (http.client, not urllib: no proxy from the environment can intervene)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def memory_kb(pid: int) -> dict[str, int]:
    """The gateway's resident memory now and at its peak (VmRSS, VmHWM), in KiB."""
    found = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line.split(":")[0]] = int(line.split()[1])
    return found


def store_bytes(path: Path) -> int:
    """The store's size on disk: the file and its WAL."""
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far, by kind (the "cpu" line of /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        return [int(v) for v in f.readline().split()[1:]]


def steal_percent(before: list[int], after: list[int]) -> float:
    """Share of the span the hypervisor gave this VM's CPUs to others (steal), in percent."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return round(100 * spent[7] / sum(spent), 1) if sum(spent) and len(spent) > 7 else 0.0


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, to show other work on the machine."""
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


# --- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Seed (or reuse) the store, start the gateway, measure every case, and return every figure."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    scale = Scale(args.users, args.keys, args.events, args.days, args.random_seed)
    if args.keys < args.users:
        raise BenchError("--keys must be at least --users (every person has a key)")
    store = args.store.absolute()
    seeded, why = (None, "--reseed") if args.reseed else reusable(store, scale)
    if seeded is None:
        say(f"seeding {store} ({why}): {scale.users:,} users, {scale.keys:,} keys, {scale.events:,} events "
            f"over {scale.days} days")
        seeded = seed(store, scale)
        seeded["reused"] = False
        say(f"seeded in {seeded['seconds']['total']:.0f} s")
    else:
        say(why)
        seeded["reused"] = True
    load_before = loadavg()
    facts = Facts(store)
    result: dict[str, Any] = {
        "command": "python -m bench.admin_scale " + " ".join(sys.argv[1:]),
        "started": started, "machine": machine(), "git": git_state(), "store": str(store),
        "store_bytes": store_bytes(store), "seeding": seeded, "loadavg_before": load_before,
    }
    if args.seed_only:
        return result
    pinned = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    gw_cpu, client_cpu = (args.gateway_cpu, args.client_cpu) if pinned else (None, None)
    if not pinned:
        say("fewer than two cores or no taskset: nothing is pinned, figures mix gateway and client work")
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    token = secrets.token_urlsafe(32)
    children = Children(workdir)
    rows = []
    try:
        gateway, port = start_gateway(children, args.python or sys.executable, workdir, store, token, gw_cpu)
        say(f"gateway on 127.0.0.1:{port} (cpu {gw_cpu}), client on cpu {client_cpu}")
        client = Client(port, token, args.request_timeout)
        local = threading.local()

        def pooled() -> Client:
            if not hasattr(local, "client"):
                local.client = Client(port, token, args.request_timeout)
            return local.client

        today = datetime.now(UTC).date()
        cores = load.CoreMeter([c for c in (gw_cpu, client_cpu) if c is not None])
        ticks, own = cpu_ticks(), load.CpuMeter(os.getpid())
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="browser") as pool:
            for case in cases(facts, today, scale.days):
                row = measure(case, client, pool, pooled, gateway.pid, args.warmup, args.repeat)
                say(f"  {case.page}: {case.name}: p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, "
                    f"max {row['max_ms']:.0f} ms")
                rows.append(row)
        if datetime.now(UTC).date() != today:
            raise BenchError("the UTC day changed during the run, so the default ranges moved: run it again")
        result |= {"cores_busy": cores.percent(), "steal_percent": steal_percent(ticks, cpu_ticks()),
                   "client_cpu_percent": own.percent(),
                   "gateway_memory_kb": memory_kb(gateway.pid)}
    finally:
        children.stop_all()
    return result | {
        "pinning": {"gateway_cpu": gw_cpu, "client_cpu": client_cpu}, "repeat": args.repeat, "warmup": args.warmup,
        "loadavg_after": loadavg(), "results": rows, "verdicts": verdicts(rows),
    }


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per page: its slowest variant at p95, and whether that is under the budget."""
    found = []
    for page in dict.fromkeys(r["page"] for r in rows):
        worst = max((r for r in rows if r["page"] == page), key=lambda r: r["p95_ms"])
        found.append({"page": page, "worst": worst["case"], "p95_ms": worst["p95_ms"], "max_ms": worst["max_ms"],
                      "under_budget": worst["p95_ms"] < BUDGET_MS})
    return found


def markdown(result: dict[str, Any]) -> str:
    """The report: the seeding, the table, one verdict per page, the store and the gateway's memory."""
    seeding = result["seeding"]
    scale = seeding["scale"]
    lines = [
        f"Store {result['store']}: {scale['users']:,} users, {scale['keys']:,} keys, {scale['events']:,} events over "
        f"{scale['days']} days, {seeding['counts']['audit_log']:,} audit entries, "
        f"{seeding['counts']['usage_rollups']:,} rollup rows; {result['store_bytes'] / 2**20:,.0f} MiB on disk.",
        f"Seeding: {seeding['seconds']['total']:.0f} s"
        + (" (earlier run; this one reused the store)" if seeding.get("reused") else "")
        + " (" + ", ".join(f"{k} {v:.0f} s" for k, v in seeding["seconds"].items() if k != "total") + ").",
    ]
    if "results" not in result:
        return "\n".join(lines)
    lines += [
        "",
        f"{result['repeat']} timed runs of each, after {result['warmup']} untimed; one keep-alive connection, "
        "three for the usage page's calls at once.",
        "",
        "| page | variant | p50 ms | p95 ms | max ms | gateway CPU ms | bytes |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(f"| {r['page']} | {r['case']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r['gateway_cpu_ms']:.1f} | {r['bytes']:,} |")
    lines.append("")
    for v in result["verdicts"]:
        verdict = "under 1 s" if v["under_budget"] else "NOT under 1 s"
        lines.append(f"{v['page']} page: {verdict} (slowest variant: {v['worst']}, p95 {v['p95_ms']:.0f} ms, "
                     f"max {v['max_ms']:.0f} ms)")
    memory = result.get("gateway_memory_kb", {})
    lines += [
        "",
        f"Gateway memory: RSS {memory.get('VmRSS', 0) / 1024:.0f} MiB at the end, "
        f"peak {memory.get('VmHWM', 0) / 1024:.0f} MiB. Cores busy while measuring: {result.get('cores_busy')} "
        f"(of which this client {result.get('client_cpu_percent')}%; steal {result.get('steal_percent')}%). "
        f"Load average before {result['loadavg_before']}, after {result['loadavg_after']}.",
    ]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "kernel": platform.release()}


# --- --mongo-shapes: what each page asks of MongoDB -----------------------------------------


def mongomock_client() -> Any:
    """A mongomock client whose bulk builder takes pymongo's `sort` argument (never set by the store)."""
    import mongomock
    from mongomock.collection import BulkOperationBuilder

    for name in ("add_update", "add_replace"):
        method = getattr(BulkOperationBuilder, name)
        if "sort" not in method.__code__.co_varnames:
            def accept(self: Any, *args: Any, sort: Any = None, _method: Any = method, **kwargs: Any) -> Any:
                return _method(self, *args, **kwargs)
            setattr(BulkOperationBuilder, name, accept)
    return mongomock.MongoClient()


def mongo_copy(path: Path, days: int) -> Any:
    """The seeded SQLite store's people, keys, events and audit log in a MongoDB store on mongomock,
    with its rollups built by the MongoDB store itself; shapes it runs are noted in `.shapes`."""
    from llmgateway.store import BUCKETS, open_store
    from llmgateway.store.mongo import MongoStore

    class Noting(MongoStore):
        """The MongoDB store, noting the query shape of every read (a count from metadata as such)."""

        shapes: list[str] = []

        def _find(self, shape: str, *args: Any, **kwargs: Any) -> Any:
            self.shapes.append(shape)
            return super()._find(shape, *args, **kwargs)

        def _count(self, shape: str, query: dict[str, Any]) -> int:
            self.shapes.append(f"{shape} (count)" if query else "estimated count")
            return super()._count(shape, query)

        def _aggregate(self, shape: str, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
            self.shapes.append(f"{shape} (aggregate)")
            return super()._aggregate(shape, pipeline)

    source = open_store(f"sqlite:///{path}")
    store = Noting("mongodb://mongomock/llmgateway", client=mongomock_client())
    store.init()
    for user in source.find_users(limit=None)[0]:  # type: ignore[arg-type]
        store.upsert_user(user)
    for key in source.list_keys():
        store.insert_key(key)
    store.insert_usage(source.find_usage(limit=None)[0])  # type: ignore[arg-type]
    for entry in reversed(source.find_audit(limit=None)[0]):  # type: ignore[arg-type]
        store.insert_audit(entry)
    since = time.time() - (days + 1) * 86400
    for bucket, size in BUCKETS.items():
        store.rollup_usage(bucket, since // size * size, time.time())
    source.close()
    return store


async def page_shapes(store: Any, case: Case) -> list[str]:
    """The shapes the admin core issues for one case, call by call as the page sends them."""
    from llmgateway.admin.service import Admin
    from llmgateway.config import parse_config
    from llmgateway.gateway import Gateway

    with tempfile.TemporaryDirectory(prefix="llmgw-shapes-") as tmp:
        gateway = Gateway(parse_config({"usage": {"spool_dir": tmp}}), store)
        admin = Admin(gateway, None)
        routes: dict[str, Callable[[dict[str, str]], Any]] = {
            "/keys": admin.list_keys, "/users": admin.list_users, "/usage/events": admin.usage.events,
            "/audit": admin.find_audit, "/models": lambda args: admin.models.list_models(),
            "/usage": lambda args: (admin.usage.csv if args.get("format") == "csv" else admin.usage.report)(args),
        }
        store.shapes.clear()
        try:
            for path in case.paths:
                route, _, query = path.partition("?")
                await routes[route](dict(parse_qsl(query)))
        finally:
            gateway.upstream.close()
            gateway.executor.shutdown(wait=True)
        return list(dict.fromkeys(store.shapes))


def shapes_report(args: argparse.Namespace) -> str:
    """Seed (or reuse) the store, copy it to mongomock, and list each page's shapes and their indexes."""
    from llmgateway.store.mongo import QUERIES

    scale = Scale(args.users, args.keys, args.events, args.days, args.random_seed)
    store_path = args.store.absolute()
    if args.reseed or reusable(store_path, scale)[0] is None:
        say(f"seeding {store_path}: {scale.users:,} users, {scale.keys:,} keys, {scale.events:,} events")
        seed(store_path, scale)
    store = mongo_copy(store_path, scale.days)
    lines = ["| page | variant | query shape | index (hinted) |", "|---|---|---|---|"]
    for case in cases(Facts(store_path), datetime.now(UTC).date(), scale.days):
        for shape in asyncio.run(page_shapes(store, case)):
            name = shape.split(" (")[0]
            index = "collection metadata" if shape == "estimated count" else ", ".join(
                f"{field} {direction:+d}" for field, direction in QUERIES[name].index)
            where = "" if shape == "estimated count" else f"{QUERIES[name].collection}: "
            lines.append(f"| {case.page} | {case.name} | {shape} | {where}{index} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.admin_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=DEFAULT_STORE,
                   help=f"the seeded SQLite file, kept for reruns [{DEFAULT_STORE}]")
    p.add_argument("--reseed", action="store_true", help="seed the store afresh even if it could be reused")
    p.add_argument("--seed-only", action="store_true", help="seed (or check) the store, start no gateway")
    p.add_argument("--mongo-shapes", action="store_true",
                   help="measure nothing: report each page's MongoDB query shapes and their indexes (mongomock)")
    p.add_argument("--users", type=int, default=20_000, help="people [20000]")
    p.add_argument("--keys", type=int, default=300_000,
                   help="API keys: one per person, the rest Pareto-spread [300000]")
    p.add_argument("--events", type=int, default=1_000_000, help="usage events [1000000]")
    p.add_argument("--days", type=int, default=90, help="the events span this many days back from now [90]")
    p.add_argument("--random-seed", type=int, default=1, help="seed of the data's random generator [1]")
    p.add_argument("--repeat", type=int, default=20, help="timed runs of each page and variant [20]")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first [2]")
    p.add_argument("--gateway-cpu", type=int, default=0, help="core for the gateway [0]")
    p.add_argument("--client-cpu", type=int, default=1, help="core for this client [1]")
    p.add_argument("--python", default=None, metavar="PATH", help="interpreter that runs the gateway [this one]")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds one call may take [120]")
    p.add_argument("--time-limit", type=float, default=3600.0,
                   help="seconds the whole run may take, seeding included [3600]")
    p.add_argument("--out", type=Path, default=None, help="JSON file [bench/results/admin-scale-<UTC time>.json]")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or min(args.users, args.keys, args.events, args.days) < 1:
        p.error("--repeat, --users, --keys, --events and --days must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: run, print the report, write the JSON."""
    args = parse_args(argv)
    out = args.out or REPO / "bench" / "results" / f"admin-scale-{datetime.now(UTC):%Y-%m-%dT%H%M%SZ}.json"
    sys.path.insert(0, str(REPO))
    if args.mongo_shapes:
        print(shapes_report(args))
        return 0
    try:
        with (terminate_on_sigterm(), Deadline(args.time_limit),
              tempfile.TemporaryDirectory(prefix="llmgw-admin-bench-") as tmp):
            result = run(args, Path(tmp))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; gateway stopped", file=sys.stderr)
        return 130
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{result['command']}  ({result['started']}, {result['machine']['cpus']} cpus, SQLite "
          f"{result['machine']['sqlite']}, commit {str(result['git']['commit'])[:12]}"
          f"{' dirty' if result['git']['dirty'] else ''})\n")
    print(markdown(result))
    print(f"\nJSON: {out}")
    return 0 if all(v["under_budget"] for v in result.get("verdicts", ())) else 1


if __name__ == "__main__":
    sys.exit(main())
