"""Installing the project's requirements from a wheelhouse folder, with no network (offline GPU nodes and clusters).

Made beforehand on a machine with a package index (docs/reference.md#installation-without-network):

    pip download -r requirements.txt -c requirements-lock.txt -d DIR            # same platform and Python

then, on the offline machine, `WHEELHOUSE=DIR bash tools/setup_env.sh`, `bash tools/gpu_check.sh --wheelhouse DIR`
or directly:

    python3 -m tools.install_wheelhouse DIR [--venv .venv]

which runs `pip install --no-index --find-links DIR -r requirements.txt -c requirements-lock.txt` in the venv
(created with --system-site-packages when missing, so the machine's own torch stays visible). When the venv's torch
is already a CUDA build it is kept: the lock file's pins of torch and its CUDA companions are left out and torch is
pinned to the installed version instead. A package the wheelhouse lacks ends in one line naming it. Standard
library only: it runs before anything of the project is installed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO_ROOT / 'requirements.txt'
LOCK = REPO_ROOT / 'requirements-lock.txt'
# torch and what a CUDA build of it brings: the lock's pins of these are dropped when the machine's torch is kept
# (nvidia-ml-py3 is fastai's, not torch's)
TORCH_FAMILY = re.compile(r'^\s*(torch|torchvision|triton|nvidia-(?!ml-py)[a-z0-9_.-]+|cuda-[a-z0-9_.-]+)\s*[=<>!~]',
                          re.IGNORECASE)
TORCH_PROBE = 'import torch; print(torch.__version__); print(torch.version.cuda or "")'
NOT_FOUND = re.compile(r'No matching distribution found for (\S+)')
# with a constraint, pip reports a package it finds no file of as a conflict between the request and the pin
CONFLICT = re.compile(r'Cannot install .+ because these package versions have conflicting dependencies')
CAUSE = re.compile(r'^\s+(The user requested.*|\S+ \S+ depends on .*)$', re.MULTILINE)
DIST_NAME = re.compile(r'^(.+?)-\d')


class WheelhouseError(RuntimeError):
    """The install from the wheelhouse failed: one line that says why (which package, or pip's own reason)."""


def torch_build(python: str) -> tuple[str, str] | None:
    """(version, CUDA version or '') of the torch that `python` imports; None when it has none."""
    try:
        done = subprocess.run([python, '-c', TORCH_PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None
    return lines[0].strip(), (lines[1].strip() if len(lines) > 1 else '')


def constraints_keeping_torch(lock: Path, out: Path, torch_version: str) -> Path:
    """`lock` without its pins of torch and its CUDA companions, plus `torch==<the installed version>`."""
    kept = [line for line in lock.read_text().splitlines() if not TORCH_FAMILY.match(line)]
    out.write_text('\n'.join([*kept, f'torch=={torch_version}']) + '\n')
    return out


def pip_command(python: str, wheelhouse: Path, requirements: Path, constraints: Path) -> list[str]:
    """The install command: only the wheelhouse, never an index."""
    return [python, '-m', 'pip', 'install', '--disable-pip-version-check', '--no-index', '--find-links',
            str(wheelhouse), '-r', str(requirements), '-c', str(constraints)]


def normal_name(name: str) -> str:
    """A distribution name as pip compares it (PEP 503: case, '-', '_' and '.' alike)."""
    return re.sub(r'[-_.]+', '-', name).lower()


def names_in(wheelhouse: Path) -> set[str]:
    """The distributions the wheelhouse has a file of (wheels and source archives)."""
    names = set()
    for path in wheelhouse.iterdir() if wheelhouse.is_dir() else []:
        match = DIST_NAME.match(path.name)
        if match and path.name.endswith(('.whl', '.tar.gz', '.zip')):
            names.add(normal_name(match.group(1)))
    return names


def lacks_line(requirement: str, wheelhouse: Path) -> str:
    """The one line for a package the wheelhouse has no usable file of."""
    return (f'the wheelhouse {wheelhouse} lacks {requirement} (for this machine\'s Python and platform): add it with '
            'pip download on a machine with a package index (docs/reference.md#installation-without-network)')


def failure_line(output: str, wheelhouse: Path) -> str:
    """pip's failure as one line: the package the wheelhouse lacks, else the conflict, else pip's last error."""
    missing = NOT_FOUND.findall(output)
    if missing:
        return lacks_line(missing[-1], wheelhouse)
    if CONFLICT.search(output):
        causes = [c.strip() for c in CAUSE.findall(output)]
        have = names_in(wheelhouse)
        for cause in sorted(causes, key=lambda c: '(constraint)' not in c):  # the exact pin first
            spec = cause.split('(constraint)')[-1].split('requested')[-1].strip() if 'requested' in cause else ''
            name = re.split(r'[<>=!~;\[ ]', spec, maxsplit=1)[0]
            if name and normal_name(name) not in have:
                return lacks_line(spec, wheelhouse)
        return f'installing from the wheelhouse {wheelhouse} failed: conflicting versions: {"; ".join(causes)}'[:600]
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith('ERROR')]
    last = errors[-1] if errors else (output.strip().splitlines() or ['no output'])[-1]
    return f'installing from the wheelhouse {wheelhouse} failed: {last[:300]}'


def install(python: str, wheelhouse: Path, work: Path, requirements: Path | None = None, lock: Path | None = None,
            log: Path | None = None) -> list[str]:
    """pip install the requirements (default requirements.txt with requirements-lock.txt) into `python`'s
    environment from `wheelhouse` only, keeping its torch when that is a CUDA build; returns the command run; raises
    WheelhouseError with one line when pip fails."""
    requirements, lock = requirements or REQUIREMENTS, lock or LOCK
    if not wheelhouse.is_dir():
        raise WheelhouseError(f'the wheelhouse {wheelhouse} is not a folder')
    build = torch_build(python)
    constraints = lock
    if build is not None and build[1]:
        constraints = constraints_keeping_torch(lock, work / 'constraints-keep-torch.txt', build[0])
    cmd = pip_command(python, wheelhouse, requirements, constraints)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if log is not None:
        with open(log, 'a') as out:
            out.write('$ ' + ' '.join(cmd) + '\n' + done.stdout + done.stderr)
    if done.returncode != 0:
        raise WheelhouseError(failure_line(done.stdout + done.stderr, wheelhouse))
    return cmd


def venv_python(venv: Path) -> Path:
    """The interpreter of a venv."""
    return venv / 'bin' / 'python'


def ensure_venv(venv: Path, base_python: str) -> Path:
    """`venv` (created from `base_python` with --system-site-packages when missing, so that the machine's torch
    stays visible); returns its interpreter."""
    python = venv_python(venv)
    if not python.exists():
        subprocess.run([base_python, '-m', 'venv', '--system-site-packages', str(venv)], check=True)
    return python
