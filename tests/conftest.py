"""Shared fixtures: the real app, launched as a subprocess on loopback, driven by gradio_client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """`python app.py ARGS` on a free loopback port, with its log kept for failure messages."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = workdir / f"server-{self.port}.log"
        self.outputs = workdir / f"outputs-{self.port}"
        command = [sys.executable, str(ROOT / "app.py"), "--port", str(self.port), "--outputs", str(self.outputs), *args]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    def wait_until_serving(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"app not serving after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-5000:]

    def client(self) -> Client:
        return Client(self.url, verbose=False)

    def __enter__(self) -> AppServer:
        """`with AppServer(...) as server:` waits until it serves and stops it on the way out."""
        try:
            self.wait_until_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


@pytest.fixture(scope="session")
def tiny_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The app serving every tiny random-weight model, shared by the whole session."""
    with AppServer(["--tiny"], tmp_path_factory.mktemp("tiny-app")) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_client(tiny_app: AppServer) -> Client:
    return tiny_app.client()


def model_row(client: Client, key: str) -> dict:
    """The System tab's row for one model (`/system_status`), e.g. its "in use" lease count."""
    return next(row for row in client.predict(api_name="/system_status") if row["key"] == key)


def stop_when(client: Client, job: Any, key: str, started: Callable[[list], bool], timeout: float = 60) -> None:
    """Wait until `started(job.outputs())`, cancel the job as the Stop button does, then wait until the
    model `key` is no longer leased (the generation has really ended)."""
    deadline = time.monotonic() + timeout
    while not started(job.outputs()):
        assert time.monotonic() < deadline, "no progress before the deadline"
        time.sleep(0.02)
    job.cancel()
    deadline = time.monotonic() + 30
    while model_row(client, key)["in use"] != 0:
        assert time.monotonic() < deadline, "the lease was not released after Stop"
        time.sleep(0.1)
