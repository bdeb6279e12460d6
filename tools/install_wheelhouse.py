"""Install the project's requirements into a venv from a wheelhouse folder, with no network (tools/wheelhouse.py).

    python3 -m tools.install_wheelhouse DIR [--venv .venv] [--log install.log]

Standard library only: it runs before anything of the project is installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.wheelhouse import REPO_ROOT, WheelhouseError, ensure_venv, install


def main(argv: list[str] | None = None) -> int:
    """Install into --venv from the wheelhouse; one line on stderr and status 1 when it fails."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('wheelhouse', help='folder made with pip download (see tools/wheelhouse.py)')
    p.add_argument('--venv', default=str(REPO_ROOT / '.venv'), help='the venv to install into (default .venv; '
                   'created with --system-site-packages when missing)')
    p.add_argument('--log', default=None, help="append pip's command and output to this file")
    args = p.parse_args(argv)
    try:
        python = ensure_venv(Path(args.venv), sys.executable)
        with tempfile.TemporaryDirectory() as work:
            install(str(python), Path(args.wheelhouse).resolve(), Path(work), log=Path(args.log) if args.log else None)
    except (WheelhouseError, subprocess.CalledProcessError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
