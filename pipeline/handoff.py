"""Bounded hand-offs between stages, with declared policies, and the worker that runs one output behind one.

Holoscan's lesson: every edge has a queue policy. ``drop_oldest`` (live input, lossy outputs) keeps the newest
items and counts what it discards, so latency never grows behind a slow consumer; ``block`` (replay, lossless
outputs) waits for room, bounded by a timeout where a consumer may never come back. Only the frame ids of
dropped items are kept (8 bytes each), never the frames.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections import deque
from typing import Any, Callable, Generic, Protocol, TypeVar

from models.errors import no_room

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stopped(Exception):
    """A hand-off was closed because the run is ending."""


class Handoff(Generic[T]):
    """Bounded queue between two stages; ``drop_oldest`` discards the oldest item of a full queue instead of
    blocking the producer. ``frame_id`` names an item in the drop log."""

    def __init__(self, name: str, maxsize: int, drop_oldest: bool, frame_id: Callable[[Any], int] = int) -> None:
        self.name = name
        self.maxsize = max(1, maxsize)
        self.drop_oldest = drop_oldest
        self.frame_id = frame_id
        self.dropped = array("q")  # frame ids, in drop order
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: T, *, force: bool = False, timeout: float | None = None) -> None:
        """Add ``item``; a blocking queue waits for room (TimeoutError after ``timeout`` s). Once closed only ``force``
        puts (end markers) go in, others raise Stopped: what the run's close drained and counted stays counted."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not force:
                if self._closed:  # checked again after every wait: a close may drain the queue while this one waits
                    raise Stopped(self.name)
                if len(self._items) < self.maxsize:
                    break
                if self.drop_oldest:
                    self.dropped.append(self.frame_id(self._items.popleft()))
                    break
                remaining = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if remaining <= 0:
                    raise TimeoutError(f"{self.name}: no room for {timeout} s")
                self._cond.wait(remaining)
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        """Next item; raises TimeoutError when ``timeout`` passes with none."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(self.name)
                self._cond.wait(remaining if remaining is not None else 0.1)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def get_nowait(self) -> Any:
        return self.get(timeout=0)

    def drain(self) -> list[Any]:
        """Take every queued item at once (to account for them when a run is cut short)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items

    def close(self) -> None:
        """Wake a producer blocked on a full queue so it can stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Sink(Protocol[T]):
    name: str

    def write(self, item: T) -> None: ...

    def close(self) -> None: ...


_END = object()
STOP_GRACE_S = 2.0  # once a run is stopping (a signal), every wait ends by this long after the stop, all waits together


class StopClock:
    """One deadline for a stopping run. Before a stop, waits keep their own timeouts; from the first ``stop()`` every
    wait (a hand-off, a send to a consumer, a thread join, a socket's linger) ends by stop + ``grace`` at the
    latest, so a stop takes ``grace`` in all, not a grace per output and per frame; after a second ``stop()``
    (abort) nothing waits at all."""

    def __init__(self, grace: float = STOP_GRACE_S) -> None:
        self.grace = grace
        self.stopping = threading.Event()
        self.aborted = threading.Event()
        self._deadline = float("inf")

    def stop(self) -> None:
        """First call: start the grace; a second: abort (safe from a signal handler)."""
        if self.stopping.is_set():
            self.aborted.set()
            return
        self._deadline = time.monotonic() + self.grace
        self.stopping.set()

    def left(self) -> float:
        """Seconds any wait may still take: unbounded before a stop, what is left of the grace after, 0 once aborted."""
        if self.aborted.is_set():
            return 0.0
        return max(0.0, self._deadline - time.monotonic())

    @property
    def expired(self) -> bool:
        """The grace is over (or the run was aborted): nothing more is started, what is left is dropped by id."""
        return self.left() <= 0

    def bound(self, timeout: float) -> float:
        """``timeout`` cut to what is left of the grace."""
        return min(timeout, self.left())

    def overtime(self) -> float:
        """Seconds a write already under way when the grace ended may still take (a second grace, shared by all), so
        an output is closed after its frame rather than left open under it; 0 once aborted."""
        return 0.0 if self.aborted.is_set() else max(0.0, self._deadline + self.grace - time.monotonic())


class SinkWorker(Generic[T]):
    """One output on its own thread behind its own bounded hand-off, so a slow disk or consumer delays neither
    inference nor the other outputs. Drops and write errors are per output, by frame id.

    ``lossless``: the producer waits for room, at most ``put_timeout`` s; an output that let that pass is stalled
    and its frames are dropped without waiting until it takes one again, so a dead consumer costs one timeout, not
    one per frame. Otherwise the oldest queued item is dropped. Once ``clock`` stops, waits end by its deadline.
    An output whose disk is full stops (one line) rather than failing every later frame with the same error; those
    frames are counted as failed. ``on_written`` runs on this worker after each successful write."""

    def __init__(
        self, sink: Sink[T], *, capacity: int, lossless: bool, frame_id: Callable[[Any], int], put_timeout: float = 30.0,
        on_written: Callable[[T], None] | None = None, clock: StopClock | None = None,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.lossless = lossless
        self.put_timeout = put_timeout
        self.queue: Handoff[T] = Handoff(f"output:{sink.name}", capacity, not lossless, frame_id)
        self.frame_id = frame_id
        self.on_written = on_written
        self.clock = clock or StopClock()
        self.written = 0
        self.failed: list[tuple[int, str]] = []  # (frame id, error)
        self._stalled = False
        self._stopped: str | None = None  # why the output takes no more writes (its disk is full)
        self._last_failure: type | None = None  # the kind of the last write error, logged once per run of them
        self._lock = threading.Lock()  # the worker's bookkeeping against close() giving up on it
        self._abandoned = False
        self._current: int | None = None
        self._thread = threading.Thread(target=self._loop, name=f"bonestream-output-{sink.name}", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> array:
        return self.queue.dropped

    def _left(self, start: float) -> float:
        """How long a lossless hand-off begun at ``start`` may still wait for room: the rest of the timeout, cut to
        the stop clock's grace once the run is stopping; nothing once stalled."""
        if self._stalled:
            return 0.0
        return self.clock.bound(max(0.0, start + self.put_timeout - time.monotonic()))

    def submit(self, item: T) -> None:
        if not self.lossless:
            self.queue.put(item)
            return
        start = time.monotonic()
        while True:  # in short slices, so a stop or an abort shortens a wait already under way
            try:
                self.queue.put(item, timeout=min(0.1, self._left(start)))
                self._stalled = False
                return
            except Stopped:
                break
            except TimeoutError:
                if self._left(start) <= 0:
                    break
        if not self._stalled:
            log.warning("output %s took no frame for %.3g s: dropping its frames until it takes one again", self.name, time.monotonic() - start)
        self._stalled = True
        self.queue.dropped.append(self.frame_id(item))

    def _loop(self) -> None:
        while (item := self.queue.get()) is not _END:
            with self._lock:
                if self._abandoned:  # taken as close() gave up: never written, so dropped
                    self.queue.dropped.append(self.frame_id(item))
                    return
                self._current = self.frame_id(item)
            error = self._stopped
            if error is None:
                try:
                    self.sink.write(item)
                except Exception as exc:  # one output's failure is its own: the others and the run go on
                    error = f"{exc.__class__.__name__}: {exc}"
                    if no_room(exc) or no_room(exc.__context__):
                        self._stopped = f"stopped: no room on disk since frame {self.frame_id(item)}"
                        log.error("output %s stopped: %s; what it wrote stays readable, its later frames count as failed", self.name, exc)
                    else:  # said once per kind of failure: every frame is in the summary, by id
                        level = logging.DEBUG if type(exc) is self._last_failure else logging.WARNING
                        log.log(level, "output %s failed on frame %s: %s", self.name, self.frame_id(item), exc)
                        self._last_failure = type(exc)
            with self._lock:
                if self._abandoned:  # close() gave up on this write and already counted it as failed
                    return
                self._current = None
                if error is not None:
                    self.failed.append((self.frame_id(item), error))
                    continue
                self.written += 1
                if self.on_written is not None:
                    self.on_written(item)

    def close(self, timeout: float) -> list[str]:
        """Let the queue drain (at most ``timeout`` s, cut to the stop clock's grace), then close the output. What is
        still queued then counts as dropped; once stopping, a frame under way gets the clock's overtime to finish, so
        the output closes after it (a recording stays playable). An output still writing then is left open (closing it
        under its writer would corrupt it) and that frame counts as failed. Returns what went wrong."""
        self.queue.put(_END, force=True)
        timeout = self.clock.bound(timeout)
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and (left := self.clock.bound(deadline - time.monotonic())) > 0:
            self._thread.join(min(left, 0.1))  # in slices: a stop that comes during a normal close cuts it to the grace
        errors: list[str] = []
        if self._thread.is_alive() and self.clock.stopping.is_set():  # no more frames: only the one under way may finish
            pending = [i for i in self.queue.drain() if i is not _END]
            self.queue.dropped.extend(self.frame_id(i) for i in pending)
            self.queue.put(_END, force=True)
            if pending:
                errors.append(f"{self.name}: {len(pending)} queued frames dropped after the stop's {self.clock.grace:g} s grace")
            self._thread.join(self.clock.overtime())
        if self._thread.is_alive():
            waited = f"the stop's {self.clock.grace:g} s grace" if self.clock.stopping.is_set() else f"{timeout:g} s"
            with self._lock:
                self._abandoned = True
                pending = [i for i in self.queue.drain() if i is not _END]
                self.queue.dropped.extend(self.frame_id(i) for i in pending)
                writing = self._current
                if writing is not None:
                    self.failed.append((writing, f"still being written after {waited} when the run closed"))
            if writing is not None:
                return [*errors, f"{self.name}: still writing after {waited}; left open, {len(pending)} queued frames dropped"]
            if pending:  # between frames, it writes no more: closed below
                errors.append(f"{self.name}: {len(pending)} queued frames dropped after {waited}")
        try:
            self.sink.close()
        except Exception as exc:
            errors.append(f"{self.name} close: {exc.__class__.__name__}: {exc}")
        return errors
