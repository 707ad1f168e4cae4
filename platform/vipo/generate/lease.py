"""One owner per output folder: a lease file (host, pid, start, heartbeat) that a generation run holds while it runs.

A second run into a folder whose lease is alive refuses at once, naming the holder. A lease is stale when its
heartbeat is older than ``stale_seconds`` or, on this host, its process is gone; a stale lease is taken over with a
warning (its holder died without releasing it). The holder refreshes the heartbeat from a daemon thread; the
lease file is created with ``os.link`` of a complete temporary file, which fails if another run created one first.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from vipo.config import ConfigError
from vipo.data.flow_store import atomic_write_bytes
from vipo.data.storage import TEMP_SUFFIX

__all__ = ["LEASE_NAME", "LeaseHolder", "OutputLease", "OutputLockedError"]

logger = logging.getLogger(__name__)

LEASE_NAME = "lease.json"


class OutputLockedError(ConfigError):
    """Another live run holds the output folder."""


@dataclass(frozen=True)
class LeaseHolder:
    host: str
    pid: int
    start: str
    heartbeat: float
    """Seconds since the epoch of the holder's last refresh."""
    run_id: str

    def describe(self) -> str:
        return f"{self.host} pid {self.pid} (run {self.run_id}, started {self.start})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class OutputLease:
    """``with OutputLease(folder, stale_seconds):`` holds ``folder/lease.json`` for the block.

    Raises :class:`OutputLockedError` (one line naming the holder) when a live run holds it.
    """

    def __init__(self, folder: str | Path, stale_seconds: float = 120.0):
        self.folder = Path(folder)
        self.path = self.folder / LEASE_NAME
        self.stale_seconds = stale_seconds
        self.run_id = uuid.uuid4().hex[:12]
        self.holder = LeaseHolder(socket.gethostname(), os.getpid(),
                                  dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.time(),
                                  self.run_id)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self, path: Path | None = None) -> LeaseHolder | None:
        """The holder recorded in the lease file (or ``path``); None when there is none."""
        try:
            return LeaseHolder(**json.loads((path or self.path).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # not a lease we can read: treat it as dead
            return LeaseHolder("?", -1, "?", 0.0, "?")

    def is_stale(self, holder: LeaseHolder) -> bool:
        if time.time() - holder.heartbeat > self.stale_seconds:
            return True
        return holder.host == socket.gethostname() and not _pid_alive(holder.pid)

    def _record(self) -> str:
        return json.dumps(asdict(self.holder), indent=1)

    def acquire(self) -> "OutputLease":
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            temp = self.folder / f".{LEASE_NAME}.{self.run_id}{TEMP_SUFFIX}"
            temp.write_text(self._record())
            try:
                os.link(temp, self.path)  # atomic create-if-absent, with the whole record in place
                break
            except FileExistsError:
                holder = self.read()
                if holder is None:
                    continue
                if not self.is_stale(holder):
                    raise OutputLockedError(
                        f"{self.folder}: in use by a running generation on {holder.describe()}, heartbeat "
                        f"{time.time() - holder.heartbeat:.0f} s ago; wait for it or choose another output_dir"
                    ) from None
                # Move the stale lease aside; only the run whose rename succeeds on that very lease takes over.
                claimed = self.folder / f".{LEASE_NAME}.stale.{self.run_id}{TEMP_SUFFIX}"
                try:
                    os.rename(self.path, claimed)
                except FileNotFoundError:
                    continue
                if self.read(claimed) != holder:
                    os.rename(claimed, self.path)  # another run took it over meanwhile: look again
                    continue
                claimed.unlink()
                logger.warning("%s: taking over the stale lease of %s (heartbeat %.0f s ago)", self.folder,
                               holder.describe(), time.time() - holder.heartbeat)
            finally:
                temp.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._beat, name="vipo-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_seconds / 4):
            if self.read() != self.holder:
                logger.error("%s: the lease is no longer ours; another run took it over", self.folder)
                return
            self.holder = LeaseHolder(**{**asdict(self.holder), "heartbeat": time.time()})
            atomic_write_bytes(self._record().encode(), self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.read() == self.holder:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "OutputLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
