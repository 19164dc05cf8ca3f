"""The usage ledger: an in-memory buffer written to the store in batches, never per request.

A flush that fails writes the batch to a spool file (one JSON line per event, renamed into
place so a crash never leaves half a file) and a later flush replays the spool. Store inserts
are idempotent by request id, so a replay after a partial failure never counts twice. If even
the spool cannot be written, events stay in memory up to `max_buffer_events`.

Any exception from the store counts as a failed write, not only StoreError: a backend that lets
another type escape must cost a retry, never the batch.

`appended` and `secured` count events in and events written (to the store or the spool, or
dropped when the buffer overflowed), in order: the journal deletes a segment once every event
appended before it closed is secured.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from ..records import UsageEvent
from ..store import Store

log = logging.getLogger("llmgateway.ledger")


class UsageLedger:
    """Collects usage events on the IOLoop; `flush` runs in a worker thread."""

    def __init__(self, store: Store, spool_dir: str, max_events: int, batch: int) -> None:
        self.store = store
        self.spool_dir = Path(spool_dir)
        self.max_events = max_events
        self.batch = batch
        self._events: deque[UsageEvent] = deque()
        self._flush_lock = threading.Lock()
        self._seq = 0
        self.failing = False
        self.failures = 0
        self.dropped = 0
        self.appended = 0
        self.secured = 0

    def append(self, event: UsageEvent) -> None:
        """Record one event (O(1), no I/O)."""
        self._events.append(event)
        self.appended += 1
        if len(self._events) > self.max_events:
            self._events.popleft()
            self.secured += 1
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.error("usage buffer full (%d events): %d events dropped", self.max_events, self.dropped)

    def flush(self) -> int:
        """Write buffered and spooled events to the store; return how many were written.

        Blocking; call from a worker thread. Only one flush runs at a time.
        """
        with self._flush_lock:
            written = self._replay_spool()
            while self._events:
                taken = [self._events.popleft() for _ in range(min(self.batch, len(self._events)))]
                try:
                    self.store.insert_usage(taken)
                    written += len(taken)
                    self.secured += len(taken)
                    self._recovered()
                except Exception as exc:
                    self._failed(exc)
                    self._spool_or_keep(taken)
                    break
            return written

    def _recovered(self) -> None:
        if self.failing:
            log.warning("usage store reachable again")
            self.failing = False

    @property
    def queued(self) -> int:
        """Events waiting for the next flush."""
        return len(self._events)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if not self.failing:
            log.warning("usage flush failed, spooling events to %s: %s", self.spool_dir, exc)
            self.failing = True

    def _spool_or_keep(self, events: list[UsageEvent]) -> None:
        try:
            self._write_spool(events)
            self.secured += len(events)
        except OSError as exc:
            log.error("cannot spool usage events (%s); keeping %d in memory", exc, len(events))
            self._events.extendleft(reversed(events))

    def _write_spool(self, events: list[UsageEvent]) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"usage-{time.time_ns()}-{os.getpid()}-{self._seq}.jsonl"
        tmp = self.spool_dir / (name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for e in events:
                fh.write(json.dumps(e.to_dict()) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.spool_dir / name)

    def spooled_files(self) -> list[Path]:
        if not self.spool_dir.is_dir():
            return []
        return sorted(self.spool_dir.glob("usage-*.jsonl"))

    def _replay_spool(self) -> int:
        written = 0
        for path in self.spooled_files():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
                events = [UsageEvent(**json.loads(line)) for line in lines if line]
            except (OSError, ValueError, TypeError) as exc:
                log.error("unreadable spool file %s left in place: %s", path, exc)
                continue
            try:
                self.store.insert_usage(events)
            except Exception as exc:
                self._failed(exc)
                return written
            self._recovered()
            path.unlink()
            written += len(events)
        return written
