"""Checksum-verified downloads that never leave a partial file behind.

A file is streamed into a temporary file beside its destination, hashed on the way, and
renamed over the destination only once the checksum matches (:func:`aelab.io.atomic_path`).
A failed or corrupt download therefore leaves neither the destination nor the temporary
file, and an interrupted run never mistakes half a file for a finished one.

Example:
    >>> table = Resources(
    ...     mirrors=("https://example.org/a/", "https://example.org/b/"),
    ...     files=(("train.gz", "d41d8cd98f00b204e9800998ecf8427e"),),
    ... )
    >>> table.urls("train.gz")
    ('https://example.org/a/train.gz', 'https://example.org/b/train.gz')
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aelab.io import atomic_path

__all__ = ["ChecksumError", "DownloadError", "Resources", "download_file", "download_resources", "file_digest"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched from any of its URLs."""


class ChecksumError(DownloadError):
    """A fetched (or existing) file does not have the expected checksum."""


@dataclass(frozen=True)
class Resources:
    """The canonical files of one data set: where to fetch them and their checksums.

    Attributes:
        mirrors: Base URLs (ending in ``/``) tried in order.
        files: ``(filename, md5)`` pairs; each URL is a mirror followed by the filename.
    """

    mirrors: tuple[str, ...]
    files: tuple[tuple[str, str], ...]

    def urls(self, filename: str) -> tuple[str, ...]:
        return tuple(m + filename for m in self.mirrors)

    @property
    def filenames(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.files)


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of the file at ``path``, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _expected(md5: str | None, sha256: str | None) -> tuple[str, str] | None:
    if sha256 is not None:
        return "sha256", sha256.lower()
    if md5 is not None:
        return "md5", md5.lower()
    return None


def _fetch(url: str, dest: Path, check: tuple[str, str] | None, timeout: float) -> None:
    """Stream ``url`` into ``dest`` atomically; raise on HTTP errors, truncation or checksum."""
    h = hashlib.new(check[0]) if check else None
    with atomic_path(dest) as tmp:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as e:
            e.close()  # an HTTPError holds the open response; close it or it leaks a socket
            raise DownloadError(f"HTTP {e.code} {e.reason}") from None
        with response, open(tmp, "wb") as out:
            expected_len = response.headers.get("Content-Length")
            n = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                n += len(chunk)
                if h is not None:
                    h.update(chunk)
        if expected_len is not None and expected_len.isdigit() and n != int(expected_len):
            raise DownloadError(f"truncated: got {n} of {expected_len} bytes")
        if check is not None and h is not None and h.hexdigest() != check[1]:
            raise ChecksumError(
                f"{check[0]} mismatch for {dest.name} downloaded from {url}: "
                f"expected {check[1]}, got {h.hexdigest()}; the file was discarded"
            )


def download_file(
    url: str | Sequence[str],
    dest: str | os.PathLike,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` and verify its checksum.

    If ``dest`` already exists with the expected checksum, nothing is fetched. Each URL is
    tried in order until one gives a verified file.

    Arguments:
        url: One URL, or several mirrors of the same file tried in order.
        dest: The destination file; its folder is created.
        md5: Expected MD5 hex digest.
        sha256: Expected SHA-256 hex digest (takes precedence over ``md5``).
        timeout: Socket timeout in seconds, per connection attempt and read.

    Returns:
        ``dest`` as a path.

    Raises:
        ChecksumError: The single URL served a file with the wrong checksum.
        DownloadError: No URL gave a verified file; the message lists each failure.
    """
    dest = Path(dest)
    urls = (url,) if isinstance(url, str) else tuple(url)
    if not urls:
        raise ValueError(f"no URL given for {dest}")
    check = _expected(md5, sha256)
    if dest.exists() and check is not None and file_digest(dest, check[0]) == check[1]:
        return dest
    # the folders this call creates are removed again if nothing arrives (no empty data folder left)
    new_dirs = [p for p in [dest.parent, *dest.parent.parents] if not p.exists()]
    try:
        return _download(urls, dest, check, timeout)
    except BaseException:
        for d in new_dirs:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _download(urls: tuple[str, ...], dest: Path, check: tuple[str, str] | None, timeout: float) -> Path:
    failures: list[tuple[str, Exception]] = []
    for u in urls:
        if not u.lower().startswith(("http://", "https://")):
            # urlopen would also open file:// and ftp://; a data table should never need them.
            failures.append((u, DownloadError("only http:// and https:// URLs are fetched")))
            continue
        logger.info("downloading %s -> %s", u, dest)
        try:
            _fetch(u, dest, check, timeout)
            return dest
        except (OSError, http.client.HTTPException, DownloadError) as e:  # URLError, timeouts: OSError
            logger.warning("download of %s failed: %s", u, e)
            failures.append((u, e))
    if len(failures) == 1 and isinstance(failures[0][1], ChecksumError):
        raise failures[0][1]
    lines = "\n".join(f"  {u}: {e}" for u, e in failures)
    raise DownloadError(f"could not download {dest.name} from any of {len(urls)} URL(s):\n{lines}")


def download_resources(resources: Resources, folder: str | os.PathLike, timeout: float = 60.0) -> list[Path]:
    """Download every file of ``resources`` into ``folder`` (skipping verified ones)."""
    folder = Path(folder)
    return [
        download_file(resources.urls(name), folder / name, md5=md5, timeout=timeout) for name, md5 in resources.files
    ]
