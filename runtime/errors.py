"""One line of an error: torch's DataLoader wraps a worker's exception in its traceback; this takes it back out."""

from __future__ import annotations

import re

_WORKER_WRAPPER = re.compile(r'^Caught \w+ in DataLoader worker process \d+\.')


def one_line_error(error: BaseException) -> str:
    """The message of `error` without the traceback torch's DataLoader wraps around an error from a worker process.

    A worker's exception reaches the main process as the same type whose message is 'Caught X in DataLoader worker
    process k. Original Traceback ...', ending in the line 'module.X: original message'.
    """
    text = str(error)
    if not _WORKER_WRAPPER.match(text):
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return re.sub(r'^[\w.]+: ', '', last, count=1)
