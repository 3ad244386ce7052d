"""ActorGroup: N Ray actors that form one torch.distributed group.

Each actor is a :class:`DistributedWorker` subclass. The group places the actors
(packed on one node, or spread across nodes), tells every rank where rank 0 listens,
and lets the driver call a method on all ranks at once::

    group = ActorGroup(SFTWorker, cluster_config, name="actor")
    group.call("setup", config_dict)          # same arguments on every rank
    metrics = group.call("train_step", batch)  # a list, one result per rank
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from typing import Any

from alignment.config import ClusterConfig
from alignment.errors import AlignError
from alignment.logs import actor_log_file, adopt_library_loggers, redirect_actor_output


def wait_all(refs: list, labels: list[str], what: str, timeout_s: float | None, wrap: bool = False) -> list[Any]:
    """The results of ``refs`` in order, waited on as they arrive, so a callee that fails or dies is
    reported at once, not after its peers time out in a collective it will never join.

    An ``AlignError`` raised by a callee comes back as it is; a callee that dies, or does not answer
    within ``timeout_s`` (None: no limit), is an ``AlignError`` naming it (``labels[i]`` for ``refs[i]``)
    and ``what`` it was doing; any other failure is re-raised with its traceback, or with ``wrap`` an
    ``AlignError`` naming the callee (rollout engines: a failed start is usually the user's settings).
    """
    import ray

    label_of = dict(zip(refs, labels))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=timeout)
        if not ready:
            raise AlignError(f"{label_of[pending[0]]} did not answer {what} within {timeout_s:.0f} s")
        try:
            ray.get(ready[0])
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, AlignError):
                raise AlignError(str(error.cause)) from None
            if wrap:
                raise AlignError(f"{label_of[ready[0]]} failed in {what}: {error.cause!r}") from error
            raise
        except ray.exceptions.RayActorError as error:
            raise AlignError(f"{label_of[ready[0]]} died during {what}: {error}") from error
    return ray.get(refs)


def free_address() -> tuple[str, int]:
    """This node's IP and a free TCP port on it (for a rendezvous hosted here)."""
    import ray

    ip = ray.util.get_node_ip_address()
    with socket.socket() as sock:
        sock.bind(("", 0))
        return ip, sock.getsockname()[1]


class DistributedWorker:
    """Base class of every rank: knows its rank and joins the process group on request."""

    def __init__(self, rank: int, world_size: int, threads: int, log_file: str | None = None) -> None:
        redirect_actor_output(log_file)
        self.rank = rank
        self.world_size = world_size
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)

    def address(self) -> tuple[str, int]:
        """This node's IP and a free TCP port on it (asked of rank 0 to host the rendezvous)."""
        return free_address()

    def init_process_group(self, master_addr: str, master_port: int, timeout_minutes: int) -> None:
        """Join the group with gloo on CPU or NCCL on CUDA, through DeepSpeed's launcher logic."""
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
        )
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        adopt_library_loggers()  # DeepSpeed adds its own console handler at import

        # The shared-memory all-reduce op is only used for inference and costs a 45-90 s build.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        backend = "nccl" if get_accelerator().device_name() == "cuda" else "gloo"
        deepspeed.init_distributed(
            dist_backend=backend, timeout=timedelta(minutes=timeout_minutes), auto_mpi_discovery=False
        )

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class ActorGroup:
    """A group of Ray actors running ``worker_cls`` that form one distributed group."""

    def __init__(
        self,
        worker_cls: type[DistributedWorker],
        cluster: ClusterConfig,
        name: str,
        timeout_minutes: int = 30,
        call_timeout_s: float | None = None,
        colocate_with: ActorGroup | None = None,
        share: float = 1.0,
    ) -> None:
        """``colocate_with``: place rank i in the same placement-group bundle as that group's rank i,
        reserving ``share`` of the bundle's CPUs and GPUs (models that take turns on the same devices)."""
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.name = name
        self.size = cluster.num_workers
        self.call_timeout_s = call_timeout_s
        bundle = {"CPU": cluster.cpus_per_worker}
        if cluster.gpus_per_worker:
            bundle["GPU"] = cluster.gpus_per_worker
        self.owns_placement = colocate_with is None
        if colocate_with is not None:
            self.placement_group = colocate_with.placement_group
        else:
            strategy = "STRICT_SPREAD" if cluster.spread_nodes else "PACK"
            self.placement_group = placement_group([dict(bundle)] * self.size, strategy=strategy)
            try:
                ray.get(self.placement_group.ready(), timeout=cluster.placement_timeout_s)
            except ray.exceptions.GetTimeoutError:
                remove_placement_group(self.placement_group)
                raise AlignError(
                    f"group {name!r}: Ray could not place {self.size} workers with {bundle} each "
                    f"({strategy}); available: {ray.available_resources()}"
                ) from None
        remote_cls = ray.remote(worker_cls)
        threads = max(1, int(cluster.cpus_per_worker))
        self.workers = [
            remote_cls.options(
                num_cpus=cluster.cpus_per_worker * share,
                num_gpus=cluster.gpus_per_worker * share,
                name=f"{name}-{rank}-{os.getpid()}",
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.placement_group, placement_group_bundle_index=rank
                ),
            ).remote(rank, self.size, threads, actor_log_file())
            for rank in range(self.size)
        ]
        master_addr, master_port = self._get([self.workers[0].address.remote()], "address")[0]
        self._get([w.init_process_group.remote(master_addr, master_port, timeout_minutes) for w in self.workers],
                  "init_process_group")

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``method(*args, **kwargs)`` on every rank; return the results in rank order."""
        return self._get([getattr(w, method).remote(*args, **kwargs) for w in self.workers], method)

    def call_each(self, method: str, per_rank: list[tuple]) -> list[Any]:
        """Run ``method(*per_rank[r])`` on each rank r (each its own share of the work)."""
        return self._get([getattr(w, method).remote(*args) for w, args in zip(self.workers, per_rank)], method)

    def call_rank0(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._get([getattr(self.workers[0], method).remote(*args, **kwargs)], method)[0]

    def _get(self, refs: list, method: str) -> list[Any]:
        return wait_all(refs, [f"a worker of group {self.name!r}"] * len(refs), method, self.call_timeout_s)

    def node_ids(self) -> list[str]:
        """The Ray node each rank runs on (for placement checks)."""
        return self.call("node_id")

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for worker in self.workers:
            ray.kill(worker)
        if self.owns_placement:
            remove_placement_group(self.placement_group)
