"""Real servers on 127.0.0.1 for the remote-shard tests: an S3-compatible store (moto), web servers, a bad one.

Import it by name (``from object_store import ...``), as ``shard_fixtures``: ``tests/`` is on ``sys.path``.

- ``s3_store`` (module-scoped fixture): ``moto_server`` in a subprocess, the ``AWS_*`` variables pointed at it for
  the test process and its children, a bucket; skips when ``moto_server`` or ``s3fs`` is missing.
- :func:`http_server`: ``python -m http.server`` serving a directory, in a subprocess.
- :class:`FlakyServer`: a stdlib HTTP server that cuts its first ``drops`` file responses after ``cut_after`` bytes
  (or every response, ``drops=None``): the network failures a remote shard must survive, or fail on by name.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "ser-shards"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class S3Store:
    """A running moto server: its endpoint, the bucket, and the environment that reaches it."""

    endpoint: str
    bucket: str
    env: dict[str, str]

    def upload(self, local_dir: Path, prefix: str) -> str:
        """Copy a directory's files to ``s3://bucket/prefix/``; returns that URL."""
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=self.endpoint)
        for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            fs.put_file(str(path), f"{self.bucket}/{prefix}/{path.relative_to(local_dir).as_posix()}")
        return f"s3://{self.bucket}/{prefix}"

    def put(self, key: str, data: bytes) -> None:
        """Write one object (e.g. a damaged shard over a good one)."""
        import s3fs

        s3fs.S3FileSystem(endpoint_url=self.endpoint).pipe_file(f"{self.bucket}/{key}", data)


@pytest.fixture(scope="module")
def s3_store() -> Iterator[S3Store]:
    """``moto_server`` on a free port, with ``AWS_ENDPOINT_URL`` and test credentials set for this process."""
    binary = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(binary).is_file():
        pytest.skip("moto_server is not installed (pip install -c constraints.txt -e '.[dev]')")
    if importlib.util.find_spec("s3fs") is None:
        pytest.skip("s3fs is not installed (the cloud extra)")
    port = free_port()
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    try:
        wait_for_port(port)
        os.environ.update(env)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(BUCKET)
        yield S3Store(endpoint, BUCKET, env)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """``python -m http.server`` serving ``directory`` on 127.0.0.1; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class _CuttingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, cutting the connection of the server's first ``drops`` GETs after ``cut_after`` bytes."""

    server: FlakyServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's signature)
        pass

    def copyfile(self, source, outputfile) -> None:  # noqa: ANN001 (the stdlib's signature)
        if self.command == "GET" and self.server.take_drop():
            outputfile.write(source.read(self.server.cut_after))
            outputfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        super().copyfile(source, outputfile)


class FlakyServer(http.server.ThreadingHTTPServer):
    """A web server of ``directory`` whose first ``drops`` file responses are cut (``None``: every one), in a thread.

    Use as a context manager; ``url`` is its base URL and ``cut`` counts the responses it cut.
    """

    daemon_threads = True

    def __init__(self, directory: Path, drops: int | None = 1, cut_after: int = 1 << 16) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_CuttingHandler, directory=str(directory)))
        self.drops, self.cut_after, self.cut = drops, cut_after, 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def take_drop(self) -> bool:
        with self._lock:
            if self.drops is not None and self.cut >= self.drops:
                return False
            self.cut += 1
            return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> FlakyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
