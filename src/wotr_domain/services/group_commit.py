"""The ingest policy "group commit": concurrent single-event requests share one archive
write, one metadata write and one publish.

Any driving adapter that serves concurrent callers on an asyncio loop (the HTTP API, an
embedding service) submits single events here instead of calling the ingest service
for each. Each request waits for a free flush slot; while every slot is busy, the requests that
arrive meanwhile queue up and go out together in the next flush. A lone request is
flushed at once (no timer), so batching costs nothing at low load and multiplies
throughput at high load. Every request still gets its own answer: its receipt, or the
error that refused it alone, or `Unavailable` when the whole flush failed.

What it changes in the archive: events flushed together share one NDJSON object
(`raw/dt=D/batch-<uuid7>.ndjson`, each on its own line); an event flushed alone gets its
own object (`wotr_domain.archive`). The receipt and the metadata row name the object and
the line either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import Unavailable, WotrError
from ..models import IngestRequest, Receipt

__all__ = ["GroupCommit"]


class GroupCommit:
    def __init__(
        self,
        ingest_many: Callable[[Sequence[IngestRequest]], list[Receipt | WotrError]],
        *,
        flushes: int = 4,
        max_events: int = 1000,
    ) -> None:
        """`ingest_many` is `IngestService.ingest_many` (blocking; run on this policy's own
        threads, one per flush slot, so it never competes with the caller's thread pool)."""
        self._ingest_many = ingest_many
        self._flushes = flushes
        self._max_events = max_events
        self._queue: asyncio.Queue[tuple[IngestRequest, asyncio.Future[Any]]] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(self._flushes, thread_name_prefix="wotr-flush")
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self._flushes)
        self._collector = asyncio.create_task(self._collect(), name="wotr-group-commit")

    async def stop(self) -> None:
        """Finish the flushes in progress; refuse what is still queued or collected.

        Every request gets an answer: its receipt when its flush ran, else 503 (nothing
        of it was written, so the client's retry is safe).
        """
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._refuse([])
        self._queue = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _refuse(self, batch: list[tuple[IngestRequest, asyncio.Future[Any]]]) -> None:
        """Answer 503 to `batch` and to everything still queued."""
        while self._queue is not None and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        for _, future in batch:
            if not future.done():
                future.set_result(Unavailable("api", "shutting down"))

    async def submit(self, request: IngestRequest) -> Receipt:
        if self._queue is None:
            raise Unavailable("api", "not started or shutting down")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        answer = await future
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def _collect(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            batch = [await self._queue.get()]
            try:
                await self._slots.acquire()  # while every slot is busy, the queue fills up
            except asyncio.CancelledError:  # stopping: what was taken is answered, not dropped
                self._refuse(batch)
                raise
            while len(batch) < self._max_events and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            task = asyncio.create_task(self._flush(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _flush(self, batch: list[tuple[IngestRequest, asyncio.Future[Any]]]) -> None:
        assert self._slots is not None
        try:
            loop = asyncio.get_running_loop()
            answers: list[Any] = await loop.run_in_executor(self._executor, self._ingest_many, [r for r, _ in batch])
        except WotrError as e:
            answers = [e] * len(batch)
        except Exception as e:  # answered as a 500 by the framework, never left hanging
            answers = [e] * len(batch)
        finally:
            self._slots.release()
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)
