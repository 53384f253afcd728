"""One training process per run directory, enforced by an advisory lock on `RUN/.lock`.

Two runs writing into one directory interleave `metrics.jsonl`, prune each other's checkpoints
and crash. The lock is `fcntl.flock` on a file that names its holder (pid, host, start time):
the kernel releases it when the holder exits, however it exits, so a killed run's directory is
resumed without any cleanup, and a second run is refused with one line naming the first. We call
flock directly rather than through `filelock` (which uses the same call on Unix) because the
refusal must say who holds the lock, which means reading the holder's line from the locked file.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process is training into this run directory."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock for the body; raise `RunLockedError` naming the holder if another
    process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = (run_dir / LOCK_NAME).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunLockedError(
            f"{run_dir} is in use by {holder}: wait for that run to end (or stop it), or use "
            "another --run-dir"
        ) from None
    try:
        handle.truncate(0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} (since {started})\n")
        handle.flush()
        yield
    finally:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
