"""Real servers for the slow tests: a Ray head with its dashboard (and worker nodes), an ``mlflow server``.

Each runs in its own process group on loopback with its own temp dir and ports, and is stopped by killing that
group: never ``ray stop``, which would kill every Ray on the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not up after {timeout:.0f} s\n{tail}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop_group(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


@dataclass
class MlflowServer:
    """``mlflow server`` with a sqlite backend and proxied artifacts (``mlflow-artifacts:``) under ``root``."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def artifacts_root(self) -> Path:
        return self.root / "artifacts"

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "server.log"
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.artifacts_root)],
            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        # Minutes on a loaded machine: the server imports all of mlflow before it answers.
        wait_for(lambda: http_ok(f"{self.uri}/health"), 600, "mlflow server", log)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)


@dataclass
class RayNode:
    """One ``ray start --block`` node (the head when ``head_address`` is None) in its own process group."""

    temp_dir: Path
    num_cpus: int = 2
    num_gpus: int = 0
    resources: str = ""
    head_address: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return self.head_address or f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> RayNode:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        command = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                   "--num-cpus", str(self.num_cpus), "--num-gpus", str(self.num_gpus)]
        if self.resources:
            command += ["--resources", self.resources]
        if self.head_address is None:
            command += ["--head", "--port", str(self.port), "--temp-dir", str(self.temp_dir),
                        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                        "--dashboard-port", str(self.dashboard_port)]
        else:
            command += ["--address", self.head_address]
        log = self.temp_dir / ("head.log" if self.head_address is None else f"node-{self.port}.log")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", **self.env}
        self.process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        if self.head_address is None:
            wait_for(lambda: http_ok(f"{self.dashboard_url}/api/version"), 180, "ray head dashboard", log)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
