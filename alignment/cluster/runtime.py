"""Starting or joining a Ray cluster."""

from __future__ import annotations

import logging
import os

from alignment.config import ClusterConfig
from alignment.runtime_env import configure_environment

log = logging.getLogger(__name__)


def start_ray(cluster: ClusterConfig, extra_cpus: float = 0.0) -> None:
    """Join ``cluster.address`` or start a local Ray runtime sized to this machine.

    ``extra_cpus``: logical CPUs beyond one group's (rollout engines that take turns with the
    trainers on the same cores, as PPO's phases do).
    """
    import ray

    env = configure_environment()
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": env}
    if cluster.address:
        log.info("joining Ray cluster at %s", cluster.address)
        ray.init(address=cluster.address, runtime_env=runtime_env, log_to_driver=True)
        return
    ray.init(
        num_cpus=max(os.cpu_count() or 1, int(cluster.cpus_per_worker * cluster.num_workers + extra_cpus + 0.999)),
        num_gpus=None if cluster.gpus_per_worker else 0,
        include_dashboard=False,
        object_store_memory=cluster.object_store_mb * 1024 * 1024,
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
