"""Starting or joining a Ray cluster, sized for the job that asks.

Several jobs may run in one process (``align demo``: tiny build, labeling, reward model, DPO, PPO,
compare). Each calls :func:`start_ray` with what it needs; a local runtime this process started
too small for the next job is restarted larger between jobs, so no job depends on which one came
first. A joined cluster is never restarted: if it lacks room, placing the group fails with a
message that names what was asked and what is free.
"""

from __future__ import annotations

import logging
import math
import os
import time

from alignment.config import ClusterConfig
from alignment.errors import AlignError
from alignment.runtime_env import configure_environment

log = logging.getLogger(__name__)

# The local runtime this process started: its head node and logical CPUs.
_local_node: str | None = None
_local_cpus: int = 0


def _started_here() -> bool:
    """True when the running Ray runtime is the local one :func:`start_ray` started (not a joined one)."""
    import ray

    return _local_node is not None and ray.get_runtime_context().get_node_id() == _local_node


def _running_actors(grace_s: float = 10.0) -> list[str]:
    """Named actors still alive after ``grace_s`` (a group just shut down takes a moment to die)."""
    import ray

    deadline = time.monotonic() + grace_s
    while (names := ray.util.list_named_actors(all_namespaces=True)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return names


def start_ray(cluster: ClusterConfig, cpus: float | None = None) -> None:
    """Join ``cluster.address`` or make sure a local Ray runtime has room for this job.

    ``cpus``: logical CPUs the job holds at once; None is one group of ``cluster.num_workers``
    (PPO adds its rollout engines, which take turns with the trainers on the same cores). Logical
    CPUs are Ray's bookkeeping, not cores: a local runtime gets at least this machine's core count
    and at least what the job asks.
    """
    import ray

    global _local_node, _local_cpus
    env = configure_environment()
    needed = math.ceil((cluster.cpus_per_worker * cluster.num_workers if cpus is None else cpus) - 1e-9)
    if ray.is_initialized():
        if cluster.address or not _started_here() or _local_cpus >= needed:
            return
        busy = _running_actors()
        if busy:
            raise AlignError(
                f"this job needs {needed} logical CPUs but the local Ray runtime started earlier in this "
                f"process has {_local_cpus}, and its actors {busy[:4]} are still running; shut them down first"
            )
        log.info("restarting the local Ray runtime with %d logical CPUs (had %d)", needed, _local_cpus)
        stop_ray()
    runtime_env = {"env_vars": env}
    if cluster.address:
        log.info("joining Ray cluster at %s", cluster.address)
        ray.init(address=cluster.address, runtime_env=runtime_env, log_to_driver=True)
        _local_node = None
        return
    total = max(os.cpu_count() or 1, needed)
    ray.init(
        num_cpus=total,
        num_gpus=None if cluster.gpus_per_worker else 0,
        include_dashboard=False,
        object_store_memory=cluster.object_store_mb * 1024 * 1024,
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    _local_node, _local_cpus = ray.get_runtime_context().get_node_id(), total


def stop_ray() -> None:
    import ray

    global _local_node
    if ray.is_initialized():
        ray.shutdown()
    _local_node = None
