"""Real servers for the slow tests: a Ray head with its dashboard (and worker nodes), an ``mlflow server``.

Each runs in its own process group on loopback with its own temp dir and ports, and is stopped by killing that
group: never ``ray stop``, which would kill every Ray on the machine.
"""

from __future__ import annotations

import contextlib
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


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop_group(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds (also when the leader has
    exited already: `ray start` leaves its GCS and raylet in the group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


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
            # MLflow's job runner (7 polling huey processes, for its GenAI features) would take a quarter of a core
            # for the rest of the test session; vipo uses none of its jobs.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        try:  # minutes on a loaded machine; a server that never answers is not left running
            wait_for(lambda: http_ok(f"{self.uri}/health"), 360, "mlflow server", log)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)


@dataclass
class RayNode:
    """One ``ray start --block`` node (the head when ``head_address`` is None) in its own process group.

    Token auth is explicit, never inferred from a token the machine happens to have in ``~/.ray``: with
    ``auth_token`` the node runs ``RAY_AUTH_MODE=token`` (workers must get the head's token), else ``disabled``.
    Clients (``ray job submit``, ``ray.init``) use :attr:`client_env`.
    """

    temp_dir: Path
    num_cpus: int = 2
    num_gpus: int = 0
    resources: str = ""
    head_address: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    auth_token: str | None = None
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return self.head_address or f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def client_env(self) -> dict[str, str]:
        """The environment a client of this cluster needs (the auth mode and token), over ``os.environ``."""
        if self.auth_token is None:
            return {**os.environ, "RAY_AUTH_MODE": "disabled"}
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.auth_token}

    def start(self, attempts: int = 3) -> RayNode:
        """Start the node; a head that exits before its dashboard answers is started again (Ray gives a node 30 s
        to register with the GCS, which a loaded machine can miss), up to ``attempts`` times."""
        for _ in range(attempts):
            if self._launch():
                return self
            with contextlib.suppress(ProcessLookupError):  # what the failed `ray start` left (GCS, raylet)
                os.killpg(self.process.pid, signal.SIGKILL)
            self.port, self.dashboard_port = free_port(), free_port()
        raise RuntimeError(f"ray head exited before its dashboard came up, {attempts} times\n"
                           f"{(self.temp_dir / 'head.log').read_text()[-3000:]}")

    def _launch(self) -> bool:
        """One ``ray start``; False when a head exited before its dashboard came up (worth a retry)."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        # Ray's dashboard agent listens on a fixed port (52365) by default: a second Ray on the machine (a test
        # session's local Ray, the 2-node test's worker node) would break this node's job submission.
        command = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                   "--num-cpus", str(self.num_cpus), "--num-gpus", str(self.num_gpus),
                   "--dashboard-agent-listen-port", str(free_port())]
        if self.resources:
            command += ["--resources", self.resources]
        if self.head_address is None:
            command += ["--head", "--port", str(self.port), "--temp-dir", str(self.temp_dir),
                        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                        "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(free_port())]
        else:
            command += ["--address", self.head_address]
        log = self.temp_dir / ("head.log" if self.head_address is None else f"node-{self.port}.log")
        # The dashboard gets minutes to start on a loaded machine (Ray's default gives up after 60 s).
        env = {**self.client_env, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "600", **self.env}
        self.process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        if self.head_address is None:
            # The dashboard answers before `ray start` has seen its node register (and may still exit after).
            auth = {"Authorization": f"Bearer {self.auth_token}"} if self.auth_token else {}
            ready = lambda: ("Ray runtime started" in log.read_text()  # noqa: E731
                             and http_ok(f"{self.dashboard_url}/api/version", auth))
            try:
                wait_for(lambda: self.process.poll() is not None or ready(), 900, "ray head dashboard", log)
            except TimeoutError:
                self.stop()
                raise
            return self.process.poll() is None
        return True

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
