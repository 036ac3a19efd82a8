"""The HTTP API (Starlette): routes, each /v1 request's path through the guards, and the lifespan that warms
the models up and lets in-flight work finish at shutdown.

    POST /v1/segment   {"texts": [...], "adapter"?}  -> {"words": [[word, ...], ...]}
    POST /v1/tag       {"texts": [...], "adapter"?}  -> {"entities": [[{"start", "end", "type", "text"}, ...], ...]}
    POST /v1/classify  {"texts": [...], "adapter"?}  -> {"results": [{"label", "probs": {label: p}}, ...]}
    POST /v1/generate  {"prompt", "max_new_chars", "temperature", "top_k", "top_p", "seed", "stream"?, "adapter"?}
                       -> {"text": continuation}; with "stream": true (or Accept: text/event-stream) server-sent
                       events ``data: {"text": piece}`` per character, then ``event: end`` with the whole text
    GET  /v1/models    the models served: name (null for the base), task, endpoint, labels or entity types
    GET  /healthz      200 while the process runs;  GET /readyz  200 once every model is warmed up, else 503
    GET  /metrics      Prometheus text (`metrics`);  GET /  the page to try it (`page`)

An endpoint that no served model can do answers 404 with a JSON message saying what the server does serve.
``"adapter": NAME`` picks a model; without it the base serves if it can, else the only adapter that can.

Every /v1 request passes, in order: the token (401), readiness (503), the concurrency limit (429), the body
and field checks (`limits`: 400, 413), then the model. Segment, tag and classify go through one `Batcher` per
model, all batches on one worker thread (model calls on a CPU gain nothing from running side by side).
Generation is batched too, continuously: each generating model has a `GenerationEngine`, a thread that steps
every active generation together, one character each, and lets requests join and leave between steps
(`generation`, `charformer.batch_decode`), so a long generation does not hold up the other batches, and a
streaming client that goes away leaves the batch at the next step. Errors never leak a traceback: anything
unexpected is a JSON 500 and a log line with the exception's type, not its message (which might quote text).
Logs carry lengths and timings, never the text of a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import models
from .auth import authorized
from .batching import Batcher
from .generation import GenerationEngine
from .limits import (GENERATE_FIELDS, ApiError, Limits, check_fields, get_generate_request, get_texts,
                     parse_json_object, read_body)
from .metrics import Metrics
from .page import page_routes

log = logging.getLogger("charformer.serve")

PREDICT = {"segment": (models.segment, "words"), "tag": (models.tag, "entities"),
           "classify": (models.classify, "results")}
CLIENT_CLOSED = 499  # the status nginx logs for a client that closed the connection before the answer


@dataclass
class BatchConfig:
    batching: bool = field(default=True, metadata={"help": "gather concurrent requests into one model batch"})
    max_batch: int = field(default=64, metadata={"help": "texts per gathered batch; generation: sequences per "
                                                         "decoding step"})
    max_wait_ms: float = field(default=5.0, metadata={"help": "longest wait for a batch to fill, in ms (not "
                                                                 "generation: it joins at the next step)"})


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Service:
    """The served models and everything a request needs (limits, token, batchers, metrics, state)."""

    def __init__(self, base: models.Served | None, adapters: dict[str, models.Served], *, limits: Limits,
                 token: str | None, batch: BatchConfig):
        self.served = ([base] if base else []) + list(adapters.values())
        self.base, self.adapters = base, adapters
        self.limits, self.token, self.batch = limits, token, batch
        self.metrics = Metrics(queue_depth=lambda: sum(b.queued for b in [*self.batchers.values(),
                                                                           *self.engines.values()]))
        self.batchers: dict[str | None, Batcher] = {}
        self.engines: dict[str | None, GenerationEngine] = {}
        self.ready = False
        self.active = 0  # /v1 requests being answered

    # ---------------------------------------------------------------------------------------------- lifespan
    @contextlib.asynccontextmanager
    async def lifespan(self, app) -> AsyncIterator[None]:
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="charformer-model")
        size, wait = (self.batch.max_batch, self.batch.max_wait_ms / 1000) if self.batch.batching else (1, 0.0)
        for served in self.served:
            on_batch = self.metrics.batch_size.labels(served.name or "base").observe
            if served.task == "lm":
                self.engines[served.name] = GenerationEngine(served, size, on_batch)
                self.engines[served.name].start()
            else:
                run = PREDICT[models.ENDPOINT_OF_TASK[served.task]][0]
                self.batchers[served.name] = Batcher(
                    lambda texts, s=served, run=run: run(s, texts), self.model_thread, max_batch=size, max_wait_s=wait,
                    on_batch=on_batch)
        warming = asyncio.get_running_loop().create_task(self._warm_up())
        try:
            yield
        finally:  # uvicorn gets here once the requests in flight are answered
            warming.cancel()
            for batcher in self.batchers.values():
                await batcher.close()
            for engine in self.engines.values():
                engine.close()
            self.model_thread.shutdown(wait=True)

    async def _warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        for served in self.served:
            await loop.run_in_executor(self.model_thread, models.warm_up, served)
        self.ready = True
        log.info("ready: %d model(s) warmed up in %.2f s", len(self.served), time.perf_counter() - started)

    # ---------------------------------------------------------------------------------------------- choosing
    def pick(self, endpoint: str, name) -> models.Served:
        """The model that answers `endpoint` for ``"adapter": name``. Raises ApiError 400/404."""
        task = models.TASK_OF_ENDPOINT[endpoint]
        able = [s for s in self.served if s.task == task]
        if name is None:
            if self.base is not None and self.base.task == task:
                return self.base
            if len(able) == 1:
                return able[0]
            names = sorted(s.name for s in able)
            raise ApiError(400, f'several adapters can {endpoint}: name one with "adapter", one of {names}',
                           "bad_request")
        if not isinstance(name, str):
            raise ApiError(400, f'field "adapter" must be a string, got {type(name).__name__}', "bad_request")
        served = self.adapters.get(name)
        if served is None:
            raise ApiError(404, f"no adapter of that name; this server has {sorted(self.adapters)}", "not_found")
        if served.task != task:
            use = models.ENDPOINT_OF_TASK[served.task]
            raise ApiError(400, f"adapter {name!r} is a {served.task} model: use /v1/{use}", "bad_request")
        return served

    def check_served(self, endpoint: str) -> None:
        """Raise ApiError 404 when no served model can do `endpoint`."""
        task = models.TASK_OF_ENDPOINT[endpoint]
        if not any(s.task == task for s in self.served):
            can = sorted(f"/v1/{models.ENDPOINT_OF_TASK[s.task]}" for s in self.served)
            raise ApiError(404, f"/v1/{endpoint} is not served: the loaded model(s) cannot do it; this server "
                           f"answers {sorted(set(can))}", "not_found")

    # ---------------------------------------------------------------------------------------------- requests
    def guarded(self, endpoint: str, handler: Callable[[Request], Awaitable[Response]]):
        """`handler` behind the token, readiness and concurrency checks, with errors as JSON, metrics and a log
        line (see the module docstring). A request holds its concurrency slot until the last byte of its
        answer is sent or its client has gone (`_Finally`), so a stream counts for as long as it runs."""

        async def endpoint_fn(request: Request) -> _Finally:
            started, holds_slot = time.perf_counter(), False
            try:
                if not authorized(request.headers.get("authorization"), self.token):
                    raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer ...)", "unauthorized")
                if not self.ready:
                    raise ApiError(503, "the model is warming up; retry shortly", "not_ready")
                if self.active >= self.limits.max_concurrent:
                    raise ApiError(429, f"{self.active} requests in progress (the limit); retry shortly",
                                   "overloaded")
                self.active, holds_slot = self.active + 1, True
                self.metrics.in_flight.inc()
                response = await handler(request)
            except ApiError as e:
                response = _error(e.status, e.message, _extra_headers(e.status))
                self.metrics.errors.labels(endpoint, e.reason).inc()
            except ClientDisconnect:  # gone while sending its body: nobody to answer; 499 as nginx logs it
                response = Response(status_code=CLIENT_CLOSED)
                self.metrics.errors.labels(endpoint, "disconnected").inc()
            except Exception as e:  # a bug or a failed model call: no traceback to the client, no text to the log
                log.error("internal error on /v1/%s: %s", endpoint, type(e).__name__)
                response = _error(500, "internal error")
                self.metrics.errors.labels(endpoint, "internal").inc()
            return _Finally(response, lambda: self._done(endpoint, response.status_code, started, holds_slot))

        return endpoint_fn

    def _done(self, endpoint: str, status: int, started: float, holds_slot: bool) -> None:
        if holds_slot:
            self.active -= 1
            self.metrics.in_flight.dec()
        seconds = time.perf_counter() - started
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(seconds)
        log.info("/v1/%s %d %.1f ms", endpoint, status, 1000 * seconds)

    async def body(self, request: Request) -> dict:
        raw = await read_body(request.stream(), request.headers.get("content-length"), self.limits.max_body_bytes)
        return parse_json_object(raw)

    async def predict(self, endpoint: str, request: Request) -> Response:
        self.check_served(endpoint)
        body = await self.body(request)
        check_fields(body, ("texts", "adapter"))
        served = self.pick(endpoint, body.get("adapter"))
        texts = get_texts(body, self.limits, allow_empty=endpoint != "classify")
        self.metrics.chars.labels(endpoint).inc(sum(map(len, texts)))
        log.info("/v1/%s: %d texts, %d characters", endpoint, len(texts), sum(map(len, texts)))
        results = await self.batchers[served.name].submit(texts) if texts else []
        return JSONResponse({PREDICT[endpoint][1]: results})

    async def generate(self, request: Request) -> Response:
        self.check_served("generate")
        body = await self.body(request)
        check_fields(body, GENERATE_FIELDS)
        served = self.pick("generate", body.get("adapter"))
        g = get_generate_request(body, self.limits)
        self.metrics.chars.labels("generate").inc(len(g.prompt))
        log.info("/v1/generate: prompt of %d characters, up to %d new", len(g.prompt), g.max_new_chars)
        pieces = self.engines[served.name].pieces(g)
        if g.stream or "text/event-stream" in request.headers.get("accept", ""):
            return StreamingResponse(self._events(pieces), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store"})
        text = "".join([piece async for piece in pieces])
        self.metrics.generated.inc(len(text))
        return JSONResponse({"text": text})

    async def _events(self, pieces: AsyncIterator[str]) -> AsyncIterator[str]:
        """Server-sent events of the generated pieces as they come; a client that goes away closes `pieces`,
        which takes its request out of the batch at the next step."""
        text = []
        try:
            async for piece in pieces:
                text.append(piece)
                self.metrics.generated.inc(len(piece))
                yield f"data: {json.dumps({'text': piece}, ensure_ascii=False)}\n\n"
        except Exception as e:
            log.error("internal error on /v1/generate (stream): %s", type(e).__name__)
            yield "event: error\ndata: {\"error\": \"internal error\"}\n\n"
            return
        finally:
            await pieces.aclose()
        yield f"event: end\ndata: {json.dumps({'text': ''.join(text)}, ensure_ascii=False)}\n\n"

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"models": [models.describe(s) for s in self.served]})

    async def ready_probe(self, request: Request) -> Response:
        if self.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "warming up"}, status_code=503)

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)


class _Finally:
    """An ASGI response that calls `done()` once it has been sent, or abandoned (a client gone mid-stream)."""

    def __init__(self, response: Response, done: Callable[[], None]):
        self.response, self.done = response, done

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            self.done()


def _extra_headers(status: int) -> dict | None:
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    return {"Retry-After": "1"} if status in (429, 503) else None


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return _error(exc.status_code, exc.detail, exc.headers)


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


def build_app(service: Service) -> Starlette:
    """The Starlette application of `service` (its routes; see the module docstring)."""
    routes = [Route(f"/v1/{e}", service.guarded(e, lambda r, e=e: service.predict(e, r)), methods=["POST"])
              for e in PREDICT]
    routes += [Route("/v1/generate", service.guarded("generate", service.generate), methods=["POST"]),
               Route("/v1/models", service.guarded("models", service.list_models), methods=["GET"]),
               Route("/healthz", _healthz), Route("/readyz", service.ready_probe),
               Route("/metrics", service.metrics_page), *page_routes()]
    return Starlette(routes=routes, lifespan=service.lifespan, exception_handlers={HTTPException: _http_error})
