"""`Dist`: this process's place in a data-parallel run (torchrun, launch/ddp.py, or Ray Train). The trainer
asks it to wrap the model, sum figures over the ranks and agree on stopping; one process makes it a no-op."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run, whose process group launch/ddp.py (torchrun) or Ray
    Train has set up. The default, one process, makes every method a no-op.

    How the ranks share a run: each builds the same length-grouped batches (same seed) and takes its
    share of every batch (`batching.shard`), so the global batch, the steps and the schedule are a
    1-process run's, and DDP's gradient average is the 1-process gradient. Cancel, divergence and early
    stopping are decided by all ranks together; rank 0 evaluates and shares the figures, and alone
    writes: events (the other ranks get a null sink), checkpoints and weights."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model, device: str):
        """The model as the training step calls it: in DistributedDataParallel over several processes."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # buffers (position ids) never change; static_graph: unused trainable parameters are found once
        return DistributedDataParallel(model, device_ids=[int(device.split(":")[1])] if ":" in device else None,
                                       forward_sync_buffers=False, static_graph=True)

    def all_reduce(self, values: list[float]) -> list[float]:
        """The sums of `values` over the ranks (one process: `values`)."""
        if self.world_size == 1:
            return values
        import torch
        import torch.distributed as td

        on = f"cuda:{torch.cuda.current_device()}" if td.get_backend() == "nccl" else "cpu"
        t = torch.tensor(values, dtype=torch.float64, device=on)
        td.all_reduce(t)
        return t.tolist()

    def gather(self, value: float) -> list[float]:
        """`value` of every rank, in rank order (one process: [value])."""
        if self.world_size == 1:
            return [value]
        slots = [0.0] * self.world_size
        slots[self.rank] = value
        return self.all_reduce(slots)

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on one."""
        return flag if self.world_size == 1 else self.all_reduce([float(flag)])[0] > 0

    def mean_loss(self, loss):
        """The step's loss for the log: the tensor itself, or over several ranks their mean as a float
        (the same on every rank, so that all stop together if it is not finite)."""
        return loss if self.world_size == 1 else self.all_reduce([loss.item()])[0] / self.world_size
