"""Atomic file writes: nothing a user has on disk is ever left half-written."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, ClassVar

import torch
from safetensors import safe_open


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    On any exception the temporary file is removed and ``path`` keeps its old content. The file
    ends with the permissions ``open()`` would give it (``0666`` less the umask), whatever the
    writer did to the temporary path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    mode = _default_mode()
    os.chmod(tmp, mode)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield Path(tmp)
        # again after writing: some writers (safetensors' save_file) replace the file at ``tmp``
        # with a new one of their own, 0600, instead of writing into it
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def tensors_sha256(tensors: dict) -> str:
    """Hex SHA-256 over named tensors (names, dtypes, shapes and bytes, in name order): the
    checksum aelab stores in each safetensors file it writes and verifies when reading it."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_safetensors(path: str | os.PathLike, what: str, device: str = "cpu") -> tuple[dict, dict[str, str]]:
    """The tensors and metadata of a safetensors file aelab wrote, checked against the stored
    checksum (files without one, from older versions, load unchecked).

    Raises:
        ValueError: the file is empty, truncated, not safetensors, or its tensors changed since
            they were written; the message names the file and ``what`` it should hold.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    except Exception as e:  # safetensors raises several types for damaged files
        raise ValueError(f"{path}: cannot read {what}: the file is damaged, truncated or not a safetensors "
                         f"file ({e})") from None
    stored = meta.get("sha256")
    if stored is not None and stored != tensors_sha256(tensors):
        raise ValueError(f"{path}: the {what} fail their checksum: the file was damaged after it was written")
    return tensors, meta


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock."""


LOCK_NAME = ".aelab.lock"


class RunLock:
    """An OS file lock on a run directory, held by one writer for as long as it runs.

    ``fcntl.flock`` on ``DIR/.aelab.lock``: the kernel releases it when the holder exits, even on
    SIGKILL, so a lock left by a killed process is taken over at once; the file records the
    holder's PID for the message a second writer gets.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d, RunLock(d), RunLock(d):  # re-entrant in one process
        ...     print((Path(d) / LOCK_NAME).read_text().strip() == str(os.getpid()))
        True
    """

    _held: ClassVar[dict[Path, int]] = {}  # lock file -> how many holders in this process

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = (Path(directory) / LOCK_NAME).absolute()
        self._fd: int | None = None
        self._nested = False

    def acquire(self) -> RunLock:
        """Take the lock (re-entrant within one process); :class:`RunLockedError` if another holds it."""
        if self.path in RunLock._held:
            RunLock._held[self.path] += 1
            self._nested = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is in use by process {holder} (another aelab writing to it); "
                                 "wait for it to finish or stop it, then try again") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        RunLock._held[self.path] = 1
        return self

    def release(self) -> None:
        if self._nested:
            RunLock._held[self.path] -= 1
            self._nested = False
            return
        if self._fd is not None:
            RunLock._held.pop(self.path, None)
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_orphan_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files :func:`atomic_path` leaves when a writer is killed
    mid-write (call it only while holding the directory's :class:`RunLock`); returns them."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed
