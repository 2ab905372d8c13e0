"""Fixtures for the `lem serve` integration suite: a real server on a free loopback port,
running the packaged default model, driven by the official clients, requests and curl."""

import os
import pathlib
import re
import signal
import socket
import subprocess
import time

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
LEM = os.environ.get("LEM_BIN", str(ROOT / "target" / "release" / "lem"))
MODEL = os.environ.get("LEM_TEST_MODEL", "smollm2-135m")
API_KEY = "lem-suite-key"
RUN_ID = f"{os.getpid()}-{int(time.time())}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `lem serve` process; `restart()` keeps its sessions directory. `model` is a
    packaged alias or a path (default: $LEM_TEST_MODEL, else smollm2-135m)."""

    def __init__(self, workdir, name, *extra, api_key=API_KEY, model=MODEL):
        self.workdir = pathlib.Path(workdir)
        self.name = name
        self.model = model
        self.extra = list(extra)
        self.api_key = api_key
        self.sessions = self.workdir / f"{name}-sessions"
        self.proc = None
        self.port = None
        self.starts = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self):
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def log(self):
        return self.workdir / f"{self.name}-{self.starts}.log"

    def start(self):
        self.starts += 1
        # A restart keeps the port, so clients made before it still reach the server.
        self.port = self.port or free_port()
        cmd = [LEM, "serve", "--model", self.model, "--port", str(self.port), "--sessions-dir", str(self.sessions)]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        cmd += self.extra
        self.logfile = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.logfile, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info"})
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lem serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError(f"lem serve did not come up:\n{self.tail()}")

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signals the server and returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.logfile.close()
        return rc

    def restart(self):
        rc = self.stop()
        assert rc == 0, f"server exited with {rc}:\n{self.tail()}"
        return self.start()

    def tail(self, n=40):
        try:
            return "\n".join(self.log.read_text().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def get(self, path, **kw):
        return requests.get(self.url + path, headers=self.headers, timeout=kw.pop("timeout", 120), **kw)

    def post(self, path, json=None, **kw):
        headers = {**self.headers, **kw.pop("headers", {})}
        return requests.post(self.url + path, json=json, headers=headers, timeout=kw.pop("timeout", 300), **kw)

    def metrics(self):
        """Metric samples as {'name{labels}': value}."""
        out = {}
        for line in self.get("/metrics").text.splitlines():
            m = re.match(r"^([a-zA-Z_:][^ ]*) ([0-9.eE+-]+|NaN)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("lem-serve")


@pytest.fixture(scope="session")
def server(workdir):
    s = Server(workdir, "main").start()
    yield s
    rc = s.stop()
    assert rc == 0, f"graceful shutdown failed ({rc}):\n{s.tail()}"


@pytest.fixture
def oai(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=300)


@pytest.fixture
def claude(server):
    import anthropic

    return anthropic.Anthropic(base_url=server.url, api_key=server.api_key, max_retries=0, timeout=300)


def sse_events(text):
    """Splits an SSE body into (event name, data) pairs, checking the framing."""
    assert text.endswith("\n\n"), f"SSE body does not end with a blank line: {text[-80:]!r}"
    events = []
    for block in text.split("\n\n")[:-1]:
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        if data:
            events.append((name, "\n".join(data)))
    return events
