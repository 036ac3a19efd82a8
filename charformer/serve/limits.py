"""What a request may ask for, and reading it: the limits, the JSON body, and the fields of each endpoint.

Every refusal is an `ApiError` with an HTTP status and a message that names the field and the limit, answered
as JSON ``{"error": message}``; the message never quotes the request's text (it may be private), only its
position and length.

* 400: the body is not UTF-8 JSON (an object), a field is missing, unknown, of the wrong type or out of
  range, a text holds a lone surrogate (``"\\ud800"`` in JSON: not a character), or generation asks for more
  than ``max_new_chars`` (the message names the limit).
* 413: the body is larger than ``max_body_bytes`` (counted as it arrives, whatever Content-Length claims),
  or holds more than ``max_texts`` texts or a text longer than ``max_chars``.
* 429: ``max_concurrent`` requests are already being answered (retry later).
* 503: the model is still warming up, or the server is shutting down.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, AsyncIterator


@dataclass
class Limits:
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body, in bytes"})
    max_texts: int = field(default=1000, metadata={"help": "most texts in one request"})
    max_chars: int = field(default=20_000, metadata={"help": "most characters (code points) in one text or prompt"})
    max_new_chars: int = field(default=2000, metadata={"help": "most characters one generation may ask for"})
    max_concurrent: int = field(default=256, metadata={"help": "most /v1 requests answered at once; more get 429"})

    def __post_init__(self):
        bad = [name for name, value in vars(self).items() if not isinstance(value, int) or value < 1]
        if bad:
            raise ValueError(f"limits must be integers >= 1: {', '.join(bad)}")


class ApiError(Exception):
    """A refused request: HTTP `status` and a message for the client (see the module docstring)."""

    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason  # reason: a metrics label


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The whole body from the stream of `chunks`, refused with 413 as soon as it passes `limit` bytes (so an
    endless body is not buffered) or when Content-Length already says it will."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise ApiError(413, f"body of {int(content_length):,} bytes; the limit is {limit:,}", "too_large")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"body over {limit:,} bytes", "too_large")
    return bytes(body)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json_object(body: bytes) -> dict:
    """The JSON object in `body` (UTF-8). Raises ApiError 400 for invalid UTF-8 (naming the byte offset),
    invalid JSON (line and column), NaN/Infinity, or a JSON value other than an object."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})",
                       "bad_encoding") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as e:  # JSONDecodeError's message gives the line and column; NaN gives ours
        raise ApiError(400, f"body is not valid JSON: {e}", "bad_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"body must be a JSON object, got {type(value).__name__}", "bad_request")
    return value


def check_fields(body: dict, allowed: tuple[str, ...]) -> None:
    """Raise ApiError 400 for a field not in `allowed` (nothing sent is silently ignored)."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(400, f"unknown field(s) {unknown}; this endpoint takes {list(allowed)}", "bad_request")


def _check_text(text: Any, where: str, limits: Limits) -> str:
    if not isinstance(text, str):
        raise ApiError(400, f"{where} must be a string, got {type(text).__name__}", "bad_request")
    if len(text) > limits.max_chars:
        raise ApiError(413, f"{where} has {len(text):,} characters; the limit is {limits.max_chars:,}", "too_large")
    surrogate = next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None)
    if surrogate is not None:
        raise ApiError(400, f"{where} holds a lone surrogate at character {surrogate} (not a character)",
                       "bad_request")
    return text


def get_texts(body: dict, limits: Limits, *, allow_empty: bool = True) -> list[str]:
    """``body["texts"]``: a list of at most ``max_texts`` strings of at most ``max_chars`` characters each
    (non-empty unless `allow_empty`). Raises ApiError (400, 413)."""
    texts = body.get("texts")
    if not isinstance(texts, list):
        raise ApiError(400, 'field "texts" must be a list of strings', "bad_request")
    if len(texts) > limits.max_texts:
        raise ApiError(413, f"{len(texts):,} texts; the limit is {limits.max_texts:,} per request", "too_large")
    for i, text in enumerate(texts):
        _check_text(text, f"texts[{i}]", limits)
        if not allow_empty and not text:
            raise ApiError(400, f"texts[{i}] is empty: there is nothing to classify", "bad_request")
    return texts


def _number(body: dict, name: str, kind: type, default, low, high):
    value = body.get(name, default)
    if value is None and default is None:
        return None
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok or not (low <= value <= high) or (kind is float and not math.isfinite(value)):
        raise ApiError(400, f'field "{name}" must be {"a number" if kind is float else "an integer"} in '
                       f"[{low}, {high}]{' or null' if default is None else ''}, got {value!r}", "bad_request")
    return kind(value)


@dataclass
class GenerateRequest:
    prompt: str
    max_new_chars: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    stream: bool


GENERATE_FIELDS = ("prompt", "max_new_chars", "temperature", "top_k", "top_p", "seed", "stream", "adapter")


def get_generate_request(body: dict, limits: Limits) -> GenerateRequest:
    """The fields of a /v1/generate body, checked (defaults: max_new_chars 200, temperature 0.8, top_k, top_p
    and seed null, stream false). Raises ApiError 400 (413 for a prompt over ``max_chars``)."""
    prompt = _check_text(body.get("prompt", ""), 'field "prompt"', limits)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f'field "stream" must be true or false, got {stream!r}', "bad_request")
    return GenerateRequest(prompt=prompt, max_new_chars=_number(body, "max_new_chars", int, 200, 0,
                                                                limits.max_new_chars),
                           temperature=_number(body, "temperature", float, 0.8, 0.0, 100.0),
                           top_k=_number(body, "top_k", int, None, 1, 1 << 31),
                           top_p=_number(body, "top_p", float, None, 1e-9, 1.0),
                           seed=_number(body, "seed", int, None, 0, (1 << 63) - 1), stream=stream)
