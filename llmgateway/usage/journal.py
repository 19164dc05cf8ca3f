"""The usage journal: every admitted call leaves a usage event, even when the process is killed.

The ledger keeps events in memory between flushes, and a SIGKILL (an OOM kill, say) loses them
and the calls still open. So each call also writes to a local append-only file: a line when it
opens (who, which model, its prompt estimate and prices), for streams a line of progress every
`usage.journal_progress_seconds` (what they had produced so far), and its full event when it is
recorded. Lines go to an `O_APPEND` descriptor with `write`, which hands them to the kernel: a
killed process loses nothing written; there is no fsync (a crash of the machine itself can still
lose the last few seconds). An event line is written at once, with whatever opening lines wait;
opening and progress lines wait for the end of the loop turn, so that a busy loop writes them
together: a call killed before its opening line is written has not sent its client anything.

At start the gateway replays the journals that dead processes left: recorded events as they
were, and calls that were cut by the crash as estimated events (their prompt estimate and the
last progress seen). The store ignores request ids it already has, so a call whose event had
been flushed before the crash is never counted twice.

The journal is written in segments. At every ledger flush the current segment is closed and
carried calls that are still open over to a new one; closed segments are deleted once the
events recorded in them are in the store or the spool. Each process holds an exclusive `flock`
on its segments, so several processes can share a directory and only a dead one's are replayed.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..catalog.endpoints import Endpoint
from ..records import UsageEvent
from .metering import StreamMeter
from .tokencount import estimate

log = logging.getLogger("llmgateway.journal")

# A call the crash cut before its response started: the client saw the gateway go away.
CUT_STATUS = 503
# Lines are JSON arrays (cheaper to write than objects) with these fields after the kind; an
# event line ("e") holds the event's fields in the order `UsageEvent` declares them.
OPENED = ("id", "ts", "k", "u", "m", "e", "s", "p", "pc", "cc")
PROGRESS = ("id", "c", "st", "at")


class Relayed(Protocol):
    """What the journal reads of a call in flight (the proxy's relay)."""

    meter: StreamMeter | None
    status: int
    started_client: bool
    settling: bool


@dataclass
class Entry:
    """An open call: its opening line (carried over to each new segment) and its progress."""

    line: bytes
    relay: Relayed | None
    produced: int = -1
    progress: bytes = b""


class Journal:
    """One process's journal in `directory`; all methods run on the IOLoop except `replay`."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.open: dict[str, Entry] = {}
        self._fd = -1
        self._path: Path | None = None
        self._dirty = False
        self._closed: list[tuple[Path, int, int]] = []
        self._pending: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def replay(self) -> tuple[list[UsageEvent], list[Path]]:
        """The events that dead processes' segments hold, and those segments (blocking; at start)."""
        if not self.directory.is_dir():
            return [], []
        lines: list[Any] = []
        replayed: list[Path] = []
        for path in sorted(self.directory.glob("journal-*.jsonl")):
            try:
                with open(path, "rb") as fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    raw = fh.read()
            except OSError as exc:
                log.error("unreadable journal segment %s left in place: %s", path, exc)
                continue
            for line in raw.splitlines():
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue  # a line the crash tore in half
            replayed.append(path)
        return rebuild(lines), replayed

    def start(self, replayed: list[Path], mark: int) -> None:
        """Open the first segment; `replayed` segments go once events up to `mark` are secured."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._closed += [(path, -1, mark) for path in replayed]
        self._loop = asyncio.get_running_loop()
        self._new_segment()

    def _new_segment(self) -> None:
        self._path = self.directory / f"journal-{time.time_ns()}-{os.getpid()}.jsonl"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._dirty = False

    def _write(self, data: bytes) -> None:
        """Write `data` now, after the lines waiting for the end of the loop turn."""
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending.clear()
        try:
            os.write(self._fd, data)
        except OSError as exc:
            log.error("cannot write the usage journal (%s); a crash now would lose open calls", exc)
        self._dirty = True

    def _write_soon(self, data: bytes) -> None:
        """Write `data` at the end of this loop turn, with the other lines of the turn."""
        if not self._pending and self._loop is not None:
            self._loop.call_soon(self._write_pending)
        self._pending.append(data)

    def _write_pending(self) -> None:
        if self._pending:
            self._write(b"")

    def opened(self, request_id: str, ts: float, key_id: str, user: str, model: str, endpoint: Endpoint,
               stream: bool, prompt_estimate: int, prices: tuple[float, float], relay: Relayed | None) -> None:
        """A call was admitted and goes upstream."""
        line = (json.dumps(["o", request_id, ts, key_id, user, model, endpoint.path, stream,
                            prompt_estimate, prices[0], prices[1]]) + "\n").encode()
        self.open[request_id] = Entry(line, relay if stream else None)
        self._write_soon(line)

    def closed(self, event: UsageEvent) -> None:
        """A call's event was recorded (just before it goes into the ledger)."""
        self.open.pop(event.request_id, None)
        self._write_soon((json.dumps(["e", *vars(event).values()]) + "\n").encode())

    def ended(self, request_id: str) -> None:
        """A call's relay is over: an event is on its way (counted in the background) or never comes."""
        entry = self.open.get(request_id)
        if entry is None or entry.relay is not None and entry.relay.settling:
            return
        del self.open[request_id]
        self._write_soon((json.dumps(["x", request_id]) + "\n").encode())

    def progress(self) -> None:
        """Scheduler job: what each open stream has produced so far."""
        lines = []
        for request_id, entry in list(self.open.items()):
            relay = entry.relay
            if relay is None or relay.meter is None or not relay.started_client:
                continue
            usage = relay.meter.usage
            produced = usage[1] if usage else estimate(relay.meter.completion_text())
            if produced != entry.produced:
                entry.produced = produced
                entry.progress = (json.dumps(["g", request_id, produced, relay.status, time.time()])
                                  + "\n").encode()
                lines.append(entry.progress)
        if lines:
            self._write_soon(b"".join(lines))

    def rotate(self, mark: int) -> None:
        """Before a ledger flush: close the segment (it goes once events up to `mark` are secured)
        and carry the calls still open over to a new one."""
        if self._path is None:
            return
        self._write_pending()
        if not self._dirty:
            return
        self._closed.append((self._path, self._fd, mark))
        self._new_segment()
        carried = [entry.line + entry.progress for entry in self.open.values()]
        if carried:
            self._write(b"".join(carried))

    def retire(self, secured: int) -> None:
        """After a flush: delete closed segments whose events are all in the store or the spool."""
        kept = []
        for path, fd, mark in self._closed:
            if mark > secured:
                kept.append((path, fd, mark))
                continue
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.error("cannot delete journal segment %s: %s", path, exc)
            if fd >= 0:
                os.close(fd)
        self._closed = kept

    def close(self, secured: int, mark: int) -> None:
        """At a clean shutdown, after the final flush: what is secured goes; the segment of calls
        still open (stuck past the drain) stays for the next start to replay."""
        if self._path is None:
            return
        self._write_pending()
        self._closed.append((self._path, self._fd, mark if not self.open else secured + 1))
        self._path = None
        self.retire(secured)
        for _, fd, _ in self._closed:
            if fd >= 0:
                os.close(fd)


def rebuild(lines: list[Any]) -> list[UsageEvent]:
    """Events from journal lines: recorded ones as they were, calls cut by the crash estimated."""
    opened: dict[str, dict[str, Any]] = {}
    progress: dict[str, dict[str, Any]] = {}
    done: dict[str, UsageEvent] = {}
    dropped: set[str] = set()
    for line in lines:
        try:
            if line[0] == "e":
                event = UsageEvent(*line[1:])
                done[event.request_id] = event
            elif line[0] == "o":
                opened[line[1]] = dict(zip(OPENED, line[1:], strict=True))
            elif line[0] == "g":
                progress[line[1]] = dict(zip(PROGRESS, line[1:], strict=True))
            elif line[0] == "x":
                dropped.add(line[1])
        except (KeyError, TypeError, IndexError, ValueError):
            continue
    for request_id, line in opened.items():
        if request_id in done or request_id in dropped:
            continue
        try:
            done[request_id] = cut_event(line, progress.get(request_id))
        except (KeyError, TypeError, ValueError):
            continue
    return list(done.values())


def cut_event(opened: dict[str, Any], progress: dict[str, Any] | None) -> UsageEvent:
    """The estimated event of a call the crash cut: its prompt estimate and its last progress."""
    prompt = int(opened["p"])
    completion = int(progress["c"]) if progress else 0
    cost = prompt / 1000 * float(opened["pc"]) + completion / 1000 * float(opened["cc"])
    latency = (float(progress["at"]) - float(opened["ts"])) * 1000 if progress else 0.0
    return UsageEvent(
        ts=float(opened["ts"]), request_id=str(opened["id"]), key_id=str(opened["k"]), user=str(opened["u"]),
        model=str(opened["m"]), prompt_tokens=prompt, completion_tokens=completion, cost=round(cost, 10),
        status=int(progress["st"]) if progress else CUT_STATUS, latency_ms=round(max(0.0, latency), 3),
        streamed=bool(opened["s"]), estimated=True, endpoint=str(opened["e"]),
    )
