"""User-facing errors.

Anything a user can cause (a missing file, a file that is not UTF-8, a config key that does not exist, a
checkpoint that does not match its vocabulary) raises `CharformerError` with a message that names the file and,
where it applies, the line or byte offset. Command-line entry points catch it and print one line instead of a
traceback (`run_cli`).
"""

from __future__ import annotations

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
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        status = main()
    except CharformerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status or 0)
