"""Tiny image-dataset files in the exact on-disk formats, and a local HTTP server to serve them.

Imported by the dataset tests (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import gzip
import http.server
import io
import pickle
import struct
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST = 120, 40


def idx_bytes(arr: np.ndarray) -> bytes:
    """``arr`` (uint8) as an uncompressed IDX file: magic 0x0000 08 <ndim>, big-endian sizes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = True) -> None:
    """Write ``arr`` as an IDX file at ``path`` (``path.gz``, gzipped, when ``gz``)."""
    data = idx_bytes(arr)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def idx_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST-family arrays by file stem; an image's first pixel encodes its label."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = rng.integers(0, 50, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = y * 20
        x[:, 10:18, 10:18] += (y * 20)[:, None, None]
        out[f"{prefix}-images-idx3-ubyte"] = x
        out[f"{prefix}-labels-idx1-ubyte"] = y
    return out


def idx_gz_files(seed: int = 0) -> dict[str, bytes]:
    """The four gzipped IDX files as downloaded: ``{"train-images-idx3-ubyte.gz": bytes, ...}``."""
    return {f"{k}.gz": gzip.compress(idx_bytes(v), mtime=0) for k, v in idx_arrays(seed).items()}


def make_idx_dir(directory: Path, *, gz: bool = True, seed: int = 0) -> None:
    """Four tiny MNIST-family IDX files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for stem, arr in idx_arrays(seed).items():
        write_idx(directory / stem, arr, gz=gz)


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol 2 as Python 2's cPickle wrote it: ``str``/``bytes`` as 8-bit strings."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_str8(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_str8
    dispatch[str] = save_str8


def py2_pickle(obj: object) -> bytes:
    """``obj`` pickled the way the published CIFAR-10 batches are (Python 2, numpy.core)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batches(n_train_batch: int = 20, n_test: int = 30) -> dict[str, bytes]:
    """CIFAR-10 python batches and ``batches.meta``, pickled as published; pixel 0 is the label."""
    rng = np.random.default_rng(0)
    out = {}
    sizes = [(f"data_batch_{i}", n_train_batch) for i in range(1, 6)] + [("test_batch", n_test)]
    for name, n in sizes:
        labels = [int(v) for v in np.arange(n) % 10]
        data = rng.integers(0, 255, size=(n, 3072), dtype=np.uint8)
        data[:, 0] = np.array(labels) * 10
        files = [f"img_{i}.png".encode() for i in range(n)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        out[name] = py2_pickle({**batch, b"filenames": files})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    out["batches.meta"] = py2_pickle({b"label_names": names, b"num_vis": 3072})
    return out


def write_cifar(directory: Path) -> None:
    """The batches of :func:`cifar_batches` unpacked in ``directory``."""
    directory.mkdir(parents=True)
    for name, data in cifar_batches().items():
        (directory / name).write_bytes(data)


def tarball(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A gzipped tar archive of regular files (name -> bytes) and symlinks (name -> target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def cifar_tarball() -> bytes:
    """``cifar-10-python.tar.gz`` as published: the batches under ``cifar-10-batches-py/``."""
    members = {f"cifar-10-batches-py/{k}": v for k, v in cifar_batches().items()}
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    return tarball(members)


#: A route's answer: the body (200), an HTTP error status, or ``("truncate", body)``: a
#: Content-Length of the whole body but only half of it sent before the connection closes.
Answer = bytes | int | tuple[str, bytes]


@dataclass
class Server:
    """A local HTTP server on 127.0.0.1 answering from ``routes``; ``hits`` lists paths asked."""

    routes: dict[str, Answer] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    url: str = ""


@contextmanager
def serve(routes: dict[str, Answer]) -> Iterator[Server]:
    """Serve ``routes`` (path -> answer) from a thread for the duration of the block."""
    state = Server(routes=dict(routes))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            state.hits.append(self.path)
            answer = state.routes.get(self.path, 404)
            if isinstance(answer, int):
                self.send_error(answer)
                return
            truncate = isinstance(answer, tuple)
            body = answer[1] if isinstance(answer, tuple) else answer
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if truncate else body)
            if truncate:
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
