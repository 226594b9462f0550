"""Locks of a cache folder that workers share (processes, threads, or machines that
mount it): a short lock around each write, and claims on the rows being computed.

The folder lock is an exclusive ``flock`` on the namespace's ``.lock`` file, held while
a shard is written and its bucket compacted, or while a claim is read and written:
never while a row is computed.

A claim is a file in ``claims/`` that lists the 16-byte digests of the rows one worker
is computing, and that this worker holds locked (``flock``) until those rows are stored.
A worker about to compute rows reads the live claims under the folder lock, and claims,
in the same step, the rows that nobody else claims: it computes those; the rows that
others claimed, it waits for (its ``flock`` on their claim files returns when they
drop them) and then reads from the cache. So two workers that need the same row compute
it once, and only a worker that needs a row being computed waits, for the worker
computing it. A worker that dies drops its claims with it (the kernel releases its
locks); a claim file that nobody holds is stale and removed.

Without POSIX locks (Windows) nothing is locked or claimed: workers that share a folder
may compute a row twice (the atomic renames keep every shard whole).
"""

from __future__ import annotations

import contextlib
import os
import uuid

try:
    import fcntl
except ImportError:  # no POSIX locks (Windows): parallel workers may duplicate work
    fcntl = None

CLAIM_SUFFIX = ".claim"
DIGEST_SIZE = 16


def can_lock() -> bool:
    """Whether this platform has the locks (POSIX ``flock``)."""
    return fcntl is not None


@contextlib.contextmanager
def folder_lock(path):
    """Hold the exclusive lock of the file ``path`` (created if missing)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Claim:
    """This worker's claim on the rows of ``digests``: a file in ``folder`` that lists
    them, held locked until ``drop``. Take it under the folder lock."""

    def __init__(self, folder, digests: list[bytes]):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, f"{uuid.uuid4().hex}{CLAIM_SUFFIX}")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            _write_all(self._fd, b"".join(digests))
        except BaseException:
            self.drop()
            raise

    def drop(self) -> None:
        """Remove the claim, then unlock it: a worker waiting on it wakes to find its rows
        stored (or, if this worker failed, to compute them itself)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
        try:  # unlocked explicitly: a process forked meanwhile (a data loader) shares it
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


def claimed_rows(folder) -> dict[bytes, str]:
    """The digests that live claims in ``folder`` list, each with its claim file; stale
    claims (nobody holds them) are removed. Call it under the folder lock."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    claimed = {}
    for name in names:
        if name.endswith(CLAIM_SUFFIX):
            path = os.path.join(folder, name)
            digests = _live_claim(path)
            claimed.update(dict.fromkeys(digests, path))
    return claimed


def wait_for(paths) -> None:
    """Return once every claim file of ``paths`` is dropped (or its worker is gone)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # dropped already
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # granted once its worker lets go
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # stale, if its worker died: nobody holds it any more
        finally:
            os.close(fd)


def _live_claim(path: str) -> list[bytes]:
    """The digests that the claim file ``path`` lists if a worker holds it; [] (and the
    file removed) if nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: its worker is computing these rows
            data = _read_all(fd)
            return [data[i : i + DIGEST_SIZE] for i in range(0, len(data), DIGEST_SIZE)]
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return []
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
