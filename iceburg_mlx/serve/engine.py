"""The decode thread: one `BatchGenerator` over the shared base, fed by requests from any thread.

MLX work happens on this one thread. `submit(job)` queues a row (its adapter slot picks its
role); each step's events go to the job's `sink` callback, called on the engine thread (the app
hands them to its event loop). `cancel(job)` frees the row's slot before the next step, which is
what a client that disconnects gets. An exception inside a step fails the rows in flight (their
sinks get the exception) and the engine carries on with a fresh batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from iceburg_mlx.generation import BatchEvent, BatchGenerator
from iceburg_mlx.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    prompt: list[int]
    params: SamplingParams
    slot: int                                       # adapter slot (0 = base)
    sink: Callable[[BatchEvent | Exception], None]  # called on the engine thread
    uid: int | None = field(default=None, init=False)
    done: bool = field(default=False, init=False)


class Overloaded(Exception):
    pass


class Engine:
    gather_gap_s = 0.01    # see `_drain`
    gather_max_s = 0.1

    def __init__(self, model, tokenizer, set_adapters=None, max_batch: int = 32, max_pending: int = 256):
        self.model, self.tokenizer, self.set_adapters = model, tokenizer, set_adapters
        self.max_batch, self.max_pending = max_batch, max_pending
        self._gen = self._new_generator()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._pending = 0                    # submitted and not finished (any thread reads)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="iceburg-engine", daemon=True)
        self.counters = {"requests": 0, "completed": 0, "cancelled": 0, "failed": 0, "tokens": 0, "steps": 0,
                         "peak_active": 0}
        self.started = time.time()

    def _new_generator(self) -> BatchGenerator:
        return BatchGenerator(self.model, self.tokenizer, max_batch=self.max_batch, set_adapters=self.set_adapters)

    # ---- any thread ----
    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._inbox.put(("wake", None))
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def snapshot(self) -> dict:
        return {"active": self._gen.active, "waiting": self._gen.waiting, "pending": self._pending,
                **self.counters}

    def submit(self, job: Job) -> Job:
        with self._lock:
            if self._pending >= self.max_pending:
                raise Overloaded(f"{self._pending} requests in flight (limit {self.max_pending})")
            self._pending += 1
            self.counters["requests"] += 1
        self._inbox.put(("submit", job))
        return job

    def cancel(self, job: Job) -> None:
        """Stop decoding `job` (no-op once finished)."""
        if not job.done:
            self._inbox.put(("cancel", job))

    # ---- engine thread ----
    def _finish(self, job: Job, counter: str) -> None:
        if job.done:
            return
        job.done = True
        if job.uid is not None:
            self._jobs.pop(job.uid, None)
        with self._lock:
            self._pending -= 1
            self.counters[counter] += 1

    def _drain(self, block: bool) -> None:
        """Handle queued submits and cancels. `block` (the batch is idle): wait for the first one,
        then keep collecting while more arrive within `gather_gap_s` of each other (up to
        `gather_max_s`), so a burst of requests is prefilled together rather than one and then
        the rest while the first decodes."""
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        deadline = time.monotonic() + self.gather_max_s if block else 0.0
        while True:
            kind, job = item
            if kind == "submit":
                try:
                    job.uid = self._gen.insert(job.prompt, job.params, job.slot)
                    self._jobs[job.uid] = job
                except Exception as e:  # a bad row must not stop the engine
                    self._finish(job, "failed")
                    _deliver(job, e)
            elif kind == "cancel" and not job.done:
                if job.uid is not None:
                    self._gen.cancel(job.uid)
                self._finish(job, "cancelled")
            try:
                wait = min(self.gather_gap_s, deadline - time.monotonic())
                item = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
            except queue.Empty:
                return

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain(block=not self._gen.has_work)
            if not self._gen.has_work:
                continue
            try:
                events = self._gen.step()
            except Exception as e:
                log.exception("decode step failed; failing %d rows", len(self._jobs))
                for job in list(self._jobs.values()):
                    self._finish(job, "failed")
                    _deliver(job, e)
                self._jobs.clear()
                self._gen = self._new_generator()
                continue
            self.counters["steps"] += 1
            self.counters["peak_active"] = max(self.counters["peak_active"], self._gen.active + len(
                [e for e in events if e.finish_reason is not None]))
            for ev in events:
                job = self._jobs.get(ev.uid)
                if job is None:       # cancelled meanwhile
                    continue
                if ev.token is not None:
                    self.counters["tokens"] += 1
                if ev.finish_reason is not None:
                    self._finish(job, "completed")
                if ev.text or ev.finish_reason is not None:
                    _deliver(job, ev)


def _deliver(job: Job, item: BatchEvent | Exception) -> None:
    try:
        job.sink(item)
    except Exception:  # e.g. the receiving event loop is gone; never stop the engine for it
        log.debug("could not deliver an event for row %s", job.uid, exc_info=True)
