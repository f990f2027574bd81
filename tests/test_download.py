"""Downloads from a local HTTP server, checksums, mirror fallback and the IDX reader."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from aelab.data import ChecksumError, DataConfig, DownloadError, download_file, load_data, parse_idx, read_idx
from aelab.data import images as images_module
from aelab.data.download import Resources

DATA_DIR = Path(os.environ.get("AELAB_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding written independently of the library's reader."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = struct.pack(">BBBB", 0, 0, codes[arr.dtype], arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).requests.append(self.path)
        if self.path.endswith("/short"):  # promises 100 bytes, sends 10, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path, list[str]]]:
    """Serve ``tmp_path / "srv"`` on a free port of 127.0.0.1; yields (base URL, folder, request log)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "srv"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})

    def make(*args, **kwargs):
        return handler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(scope="module")
def source() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A few hundred real Fashion-MNIST images and labels, picked at random."""
    path = DATA_DIR / "fashion-mnist.npz"
    if not path.is_file():
        pytest.fail(f"real data not found in {DATA_DIR}: set AELAB_DATA_DIR to the project's ../shared/data")
    with np.load(path) as f:
        g = np.random.default_rng(0)
        tr = g.choice(60_000, 300, replace=False)
        te = g.choice(10_000, 100, replace=False)
        return f["x_train"][tr], f["y_train"][tr], f["x_test"][te], f["y_test"][te]


def _publish(folder: Path, arrays: tuple[np.ndarray, ...]) -> Resources:
    """Write the arrays as gzipped IDX files into ``folder``; return a table with their md5."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, arr in zip(IDX_FILES, arrays, strict=True):
        data = gzip.compress(idx_bytes(arr), mtime=0)
        (folder / name).write_bytes(data)
        files.append((name, hashlib.md5(data).hexdigest()))
    return Resources(mirrors=(), files=tuple(files))


def test_download_verify_and_load(server, source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, srv, requests = server
    table = dataclasses.replace(_publish(srv / "fashion", source), mirrors=(base + "fashion/",))
    monkeypatch.setitem(images_module.RESOURCES, "fashion-mnist", table)
    root = tmp_path / "data"
    splits = load_data(DataConfig(name="fashion-mnist", root=str(root), download=True))
    x_tr, y_tr, x_te, y_te = source
    assert torch.equal(splits.train.x[:, 0], torch.from_numpy(x_tr))
    assert torch.equal(splits.test.x[:, 0], torch.from_numpy(x_te))
    assert splits.train.y.tolist() == y_tr.tolist() and splits.test.y.tolist() == y_te.tolist()
    assert sorted(p.name for p in (root / "fashion-mnist").iterdir()) == sorted(IDX_FILES)  # no temp files
    # Present files are used as they are, with or without download.
    n = len(requests)
    again = load_data(DataConfig(name="fashion-mnist", root=str(root), download=True, train_subset=10))
    assert len(requests) == n and len(again.train) == 10


def test_checksum_mismatch_raises_and_leaves_nothing(server, tmp_path: Path) -> None:
    base, srv, _ = server
    (srv / "blob.bin").write_bytes(b"hello world")
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(ChecksumError) as e:
        download_file(base + "blob.bin", dest, md5="0" * 32)
    msg = str(e.value)
    assert "blob.bin" in msg and base + "blob.bin" in msg and "0" * 32 in msg
    assert hashlib.md5(b"hello world").hexdigest() in msg
    assert not dest.parent.exists()  # nothing kept, not even the folder the download created
    # sha256 takes the same path; a folder that existed before stays (empty)
    dest.parent.mkdir()
    with pytest.raises(ChecksumError, match="sha256"):
        download_file(base + "blob.bin", dest, sha256="f" * 64)
    assert list(dest.parent.iterdir()) == []


def test_first_mirror_404_falls_back_to_the_second(server, tmp_path: Path) -> None:
    base, srv, requests = server
    (srv / "good").mkdir()
    (srv / "good" / "f.txt").write_bytes(b"payload")
    md5 = hashlib.md5(b"payload").hexdigest()
    dest = download_file([base + "missing/f.txt", base + "good/f.txt"], tmp_path / "f.txt", md5=md5)
    assert dest.read_bytes() == b"payload" and requests == ["/missing/f.txt", "/good/f.txt"]
    # A verified file is not fetched again.
    download_file([base + "missing/f.txt"], dest, md5=md5)
    assert len(requests) == 2


def test_all_mirrors_failing_lists_each_failure(server, tmp_path: Path) -> None:
    base, _, _ = server
    urls = [base + "a/f.txt", base + "short", "file:///etc/passwd"]
    with pytest.raises(DownloadError) as e:
        download_file(urls, tmp_path / "out" / "f.txt")
    msg = str(e.value)
    assert "404" in msg and "truncated" in msg and "only http" in msg and all(u in msg for u in urls)
    assert not (tmp_path / "out").exists()  # the truncated body was not kept, nor an empty data folder


# --- IDX reader ------------------------------------------------------------------------------


def test_idx_round_trip_of_several_dtypes(tmp_path: Path) -> None:
    for arr in (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.array([-5, 1 << 20], dtype=np.int32),
                np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2)):
        out = parse_idx(idx_bytes(arr))
        assert out.dtype == arr.dtype and np.array_equal(out, arr) and out.flags.writeable
    plain = tmp_path / "labels-idx1-ubyte"  # not gzipped
    plain.write_bytes(idx_bytes(np.array([3, 1, 4], np.uint8)))
    assert read_idx(plain).tolist() == [3, 1, 4]


def test_corrupt_idx_files_give_clear_errors(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="truncated IDX file: shape \\(10, 28, 28\\) needs 7840 bytes"):
        parse_idx(good[:-1])
    with pytest.raises(ValueError, match="the header alone needs 16"):
        parse_idx(good[:10])
    with pytest.raises(ValueError, match="magic number 0x00001234"):
        parse_idx(b"\x00\x00\x12\x34" + good[4:])
    with pytest.raises(ValueError, match="bytes after"):
        parse_idx(good + b"\x00")
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        read_idx(path)


def test_truncated_download_on_disk_names_the_file(source, tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    _publish(folder, source)
    victim = folder / "t10k-images-idx3-ubyte.gz"
    victim.write_bytes(gzip.compress(gzip.decompress(victim.read_bytes())[:5000]))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: truncated IDX"):
        load_data(DataConfig(name="fashion-mnist", root=str(tmp_path)))
