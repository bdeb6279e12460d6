"""Ctrl-C or SIGTERM while a command starts (its imports of torch and fastai take seconds): one line and the
shell's 128 + signal number instead of a KeyboardInterrupt traceback.

Importing this module first in a script run as `__main__` puts the handlers in place (a package's `__main__` calls
`install()`); main() replaces them with runtime.stop_signal's for the run itself.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_installed = False  # install() ran: this process is a command, not code that calls main()


def _stopped_while_starting(signum: int, frame: Any) -> None:
    sys.stderr.write(f'{signal.Signals(signum).name} stopped the run while it started; nothing was saved\n')
    sys.stderr.flush()
    os._exit(128 + signum)  # no atexit callbacks: nothing has started that needs them


def install() -> None:
    """The start-up handlers for SIGINT and SIGTERM (main thread only, where Python runs handlers)."""
    global _installed
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _stopped_while_starting)
        _installed = True


def ignore_stop_signals_at_exit() -> None:
    """SIGINT and SIGTERM ignored from now on: the command has said its last line and only exits (in a command that
    ran install() only; code that calls main() keeps its handlers)."""
    if _installed and threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def _run_as_script() -> bool:
    main = sys.modules.get('__main__')
    return os.path.basename(getattr(main, '__file__', '') or '') == 'main.py'


if _run_as_script():
    install()
