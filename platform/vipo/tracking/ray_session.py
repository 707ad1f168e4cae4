"""Connect to Ray: a cluster when an address is given (config or ``RAY_ADDRESS``), else a local instance."""

from __future__ import annotations

import os

from vipo.config import RayConfig


def init_ray(config: RayConfig) -> None:
    """Start or join Ray once per process; a second call is a no-op (tests share one session)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    ray.init(
        num_cpus=config.num_cpus or os.cpu_count(),
        num_gpus=config.num_gpus,
        include_dashboard=False,
    )
