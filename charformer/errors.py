"""User-facing errors.

Anything a user can cause (a missing file, a file that is not UTF-8, a config key that does not exist, a
checkpoint that does not match its vocabulary) raises `CharformerError` with a message that names the file and,
where it applies, the line or byte offset. Command-line entry points catch it and print one line instead of a
traceback (`run_cli`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable


class CharformerError(Exception):
    """A problem with the user's input, configuration or files; the message says what and where."""


def excerpt(text: str, limit: int = 60) -> str:
    """`text` as a Python literal for an error message (control and invisible characters escaped), cut to its
    first `limit` characters when longer, so that a 100,000-character line still gives a one-line error."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a CLI `main`, turning `CharformerError` into ``error: ...`` on stderr and exit status 2.

    SIGTERM is treated like Ctrl-C (KeyboardInterrupt), so a training loop killed politely saves a checkpoint.
    Under torchrun (``WORLD_SIZE`` > 1) a finished process ends without the interpreter's teardown: gloo's worker
    threads can still hold tensors of the last collectives, and freeing them while the interpreter shuts down
    now and then aborts the process ("terminate called without an active exception", SIGABRT; seen once in a
    2-rank FSDP test), which torchrun reports as a failed run although every file was written and closed.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        status = main()
    except CharformerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status or 0)
    sys.exit(status or 0)
