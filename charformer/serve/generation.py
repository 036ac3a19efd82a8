"""Batched generation for the server: one thread per generating model runs a continuous-batching decoder
(`charformer.batch_decode`), and each request reads its own characters from it as they come.

Requests are handed to the thread through a queue; the thread loops ``admit new requests -> one decoding
step over every active sequence -> deliver each sequence's new character to its request's event loop``, and
sleeps when no request is active. A request joins at the next step after it arrives (no gathering wait: the
step in progress is the wait), and leaves when it ends (end-of-text or its length) or when its reader goes
away (a streaming client that disconnected: closing the reader marks the request cancelled, and the decoder
drops it at the next step). ``max_batch=1`` runs one request at a time (batching off).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any, AsyncIterator, Callable

from . import models

_END = object()  # delivered after a request's last character


class GenerationEngine:
    """Generation for `served` (an ``lm`` model) with up to `max_batch` sequences per step; `on_batch(n)` is
    called with the number of sequences of each decoding step. Start it with `start`, stop it with `close`."""

    def __init__(self, served: models.Served, max_batch: int, on_batch: Callable[[int], Any] = lambda n: None):
        self.served, self.on_batch = served, on_batch
        self.decoder = models.new_decoder(served, max_batch)
        self._inbox: deque = deque()  # (request, deliver) pairs not yet given to the decoder
        self._wake = threading.Condition()
        self._deliver: dict = {}  # request -> its deliver function, while the decoder holds it
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="charformer-generate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        """Requests waiting to join the batch."""
        return len(self._inbox) + len(self.decoder.waiting)

    async def pieces(self, g) -> AsyncIterator[str]:
        """The characters generated for `g` (a `limits.GenerateRequest`), one piece per step that gave text.
        Closing this iterator early (a client gone) cancels the request. Raises what a decoding step raised."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        request = models.decode_request(self.served, g)

        def deliver(item) -> None:  # called on the engine's thread
            loop.call_soon_threadsafe(queue.put_nowait, item)

        with self._wake:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._inbox.append((request, deliver))
            self._wake.notify()
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            request.cancelled = True  # no-op for a finished request; else it leaves at the next step

    def close(self) -> None:
        """Stop the thread (call once no request is in flight: requests still queued are failed)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._inbox or self.decoder.busy):
                    self._wake.wait()
                if self._stopping:
                    self._fail_all(RuntimeError("the server is shutting down"))
                    return
                while self._inbox:
                    request, deliver = self._inbox.popleft()
                    self.decoder.add(request)
                    self._deliver[request] = deliver
            self._step()

    def _step(self) -> None:
        try:
            advanced = self.decoder.step()
        except Exception as e:  # every request in the batch learns of the failure; the engine goes on
            self._fail_all(e)
            return
        if advanced:
            self.on_batch(len(advanced))
        for request, new_id in advanced:
            piece = models.text_of(self.served, new_id)
            if piece:  # a special token (say [UNK] or end-of-text) is no text
                self._deliver[request](piece)
        for request in [r for r in self._deliver if r.finished or r.cancelled]:
            deliver = self._deliver.pop(request)
            if request.finished:
                deliver(_END)

    def _fail_all(self, error: Exception) -> None:
        with self._wake:  # pieces() appends to the inbox from the event loop's thread
            for request, deliver in [*self._deliver.items(), *self._inbox]:
                request.cancelled = True
                deliver(error)
            self._deliver.clear()
            self._inbox.clear()
            self.decoder = models.new_decoder(self.served, self.decoder.max_batch)
