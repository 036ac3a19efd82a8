"""Dynamic batching: requests that arrive close together run through the model as one batch.

A forward pass over 32 short sentences costs far less than 32 passes over one (the matrix products are wider,
and the fixed cost of each call, Python and dispatch, is paid once), so a server that answers each request
alone wastes most of its time when many clients call it at once. The batcher keeps the requests (*jobs*: one
request's list of texts) in a queue; when the model is free it waits for more until the queue holds
`max_batch` texts or `max_wait_s` has passed since the batch started gathering, whichever is first, then runs
the texts of the waiting jobs in one call of ``run(texts) -> results`` (one result per text, in order) on a
worker thread, and hands each job the slice of results that belongs to its own texts. This is what serving
systems call dynamic or adaptive batching (Clipper, Crankshaw et al. 2017; the "max queue delay" of NVIDIA
Triton's dynamic batcher).

A job is never split: one that would overflow the batch waits for the next, and a job larger than
`max_batch` runs alone. ``max_batch=1, max_wait_s=0`` runs every request alone (batching off). A job whose
caller has gone away (a client that disconnected) before its batch starts is dropped; once a batch started,
every job in it is answered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class _Job:
    items: list
    future: asyncio.Future


class Batcher:
    """Gathers jobs for one ``run(items) -> results`` function (see the module docstring); `on_batch(n)` is
    called with the number of items in each batch run. Create and use it inside one running event loop."""

    def __init__(self, run: Callable[[list], list], executor: Executor, *, max_batch: int, max_wait_s: float,
                 on_batch: Callable[[int], Any] = lambda n: None):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_s >= 0, got {max_batch} and {max_wait_s}")
        self.run, self.executor, self.on_batch = run, executor, on_batch
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._jobs: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self.queued = 0  # items waiting (not yet in a running batch)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def submit(self, items: list) -> list:
        """The results of `items`, computed in some batch. Raises whatever `run` raised for that batch."""
        job = _Job(list(items), asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self.queued += len(job.items)
        self._arrived.set()
        return await job.future

    async def close(self) -> None:
        """Stop gathering (call once no request is in flight: jobs still queued are failed)."""
        self._task.cancel()
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    async def _wait_for_job(self, timeout: float | None) -> bool:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
            return False
        return True

    def _take(self) -> list[_Job]:
        jobs, n = [], 0
        while self._jobs and (not jobs or n + len(self._jobs[0].items) <= self.max_batch):
            job = self._jobs.popleft()
            self.queued -= len(job.items)
            if not job.future.done():  # a caller that went away (cancelled) is not run
                jobs.append(job)
                n += len(job.items)
        return jobs

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._jobs:
                await self._wait_for_job(None)
            deadline = loop.time() + self.max_wait_s
            while self.queued < self.max_batch and loop.time() < deadline:
                if not await self._wait_for_job(deadline - loop.time()):
                    break
            jobs = self._take()
            if jobs:
                await self._run(jobs)

    async def _run(self, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        self.on_batch(len(items))
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, items)
            if len(results) != len(items):
                raise RuntimeError(f"batch function gave {len(results)} results for {len(items)} items")
        except Exception as e:  # every caller of the batch learns of the failure; the batcher goes on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.items)])
            start += len(job.items)
