"""Weight sync by collective broadcast: trainer rank 0 sends, every rollout engine receives.

Trainer rank 0 and the engines form a process group of their own (``1 + num_engines`` ranks, a
TCPStore hosted by trainer rank 0), apart from the trainer's DeepSpeed group: gloo on CPU, NCCL on
CUDA, the same code either way. One sync is a header (names, shapes, dtypes) and then one broadcast
per tensor, sent while the trainer gathers it (one tensor at a time under ZeRO-3), so the full model
never sits in a second copy on the sender. Engines keep their receive buffers between syncs and load
the tensors with their ``update_weights``, as for a state dict from the object store::

    trainer rank 0:  sender = WeightBroadcast(host, port, rank=0, world_size=3, backend="gloo")
                     sender.send(strategy.full_weight_layout(), strategy.full_weights())
    engine i:        receiver = WeightBroadcast(host, port, rank=i + 1, world_size=3, backend="gloo")
                     state = receiver.receive()
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from datetime import timedelta

import torch
import torch.distributed as dist

Layout = list[tuple[str, tuple[int, ...], torch.dtype]]


def broadcast_backend(cuda: bool) -> str:
    return "nccl" if cuda else "gloo"


class WeightBroadcast:
    """One rank of the trainer-to-engines broadcast group (rank 0 sends)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float = 600.0) -> None:
        timeout = timedelta(seconds=timeout_s)
        self.rank = rank
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        if backend == "nccl":
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, dist.ProcessGroupNCCL.Options())
        else:
            self.group = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        self.buffers: dict[str, torch.Tensor] = {}

    def _broadcast(self, tensor: torch.Tensor) -> None:
        self.group.broadcast(tensor, 0).wait()

    def _broadcast_header(self, layout: Layout | None) -> Layout:
        payload = torch.frombuffer(bytearray(pickle.dumps(layout)), dtype=torch.uint8) if self.rank == 0 else None
        size = torch.tensor([payload.numel() if payload is not None else 0], dtype=torch.int64, device=self.device)
        self._broadcast(size)
        data = payload.to(self.device) if payload is not None else torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        self._broadcast(data)
        return pickle.loads(data.cpu().numpy().tobytes())

    def send(self, layout: Layout, tensors: Iterable[tuple[str, torch.Tensor | None]]) -> None:
        """Rank 0: broadcast ``layout``, then each tensor as ``tensors`` yields it (names must follow the layout)."""
        self._broadcast_header(layout)
        for (name, shape, dtype), (sent_name, tensor) in zip(layout, tensors, strict=True):
            if sent_name != name or tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise RuntimeError(f"weight broadcast: {sent_name} {tuple(tensor.shape)} does not follow the layout's {name} {shape}")
            self._broadcast(tensor.detach().to(self.device).contiguous())

    def receive(self) -> dict[str, torch.Tensor]:
        """Engine ranks: the next broadcast's tensors by name (buffers reused while the layout stays the same)."""
        layout = self._broadcast_header(None)
        state = {}
        for name, shape, dtype in layout:
            buffer = self.buffers.get(name)
            if buffer is None or tuple(buffer.shape) != shape or buffer.dtype != dtype:
                buffer = self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self._broadcast(buffer)
            state[name] = buffer
        return state


class BroadcastReceiver:
    """Engine-actor methods for the broadcast path; the engine class provides ``update_weights(state_dict)``."""

    def join_weight_broadcast(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float) -> None:
        if backend == "nccl" and not torch.cuda.is_available():
            raise RuntimeError("the trainer broadcasts weights over NCCL but this engine has no CUDA device")
        self.weight_broadcast = WeightBroadcast(host, port, rank, world_size, backend, timeout_s)

    def receive_weights(self, reset_prefix_cache: bool = True) -> float:
        """Receive one broadcast and load it; returns the seconds of the load alone."""
        return self.update_weights(self.weight_broadcast.receive(), reset_prefix_cache)


class BroadcastSender:
    """Trainer-rank methods for the broadcast path; the worker class provides ``broadcast_source()``,
    the strategy whose weights it sends."""

    weight_broadcast: WeightBroadcast | None = None

    def join_weight_broadcast(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> None:
        """Rank 0 only: host the group at ``host:port`` (this node, a free port) as its sending rank."""
        self.weight_broadcast = WeightBroadcast(host, port, 0, world_size, backend, timeout_s)

    def broadcast_weights(self) -> None:
        """Every rank calls this (gathering is collective under ZeRO-3); rank 0 sends each tensor as it is gathered."""
        strategy = self.broadcast_source()
        tensors = strategy.full_weights()
        if self.weight_broadcast is None:
            for _ in tensors:
                pass
        else:
            self.weight_broadcast.send(strategy.full_weight_layout(), tensors)
