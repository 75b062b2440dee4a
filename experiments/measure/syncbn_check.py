"""SyncBatchNorm against one process holding the whole batch: BN running statistics and gradients.

Two processes (DDP, `backend`) each take half of one batch; a single process takes all of it with plain
BatchNorm. With SyncBN the two must agree to rounding: statistics over the global batch (the paper's
batch-16 BN, docs/fidelity.md) and DDP's averaged gradients equal the whole batch's. Per-process BN is
the control: its statistics differ, which shows the comparison can fail. Used by `experiments.measure.device_check`.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lightning_modules.components import DeepLabV3Plus
from lightning_modules.components.layers import BATCHNORMS


def _net(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    net = DeepLabV3Plus("mobilenet_v2", weights=None).to(device).train()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()  # no random draws: the processes must compute the same function as the single one
    return net


def _batch(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(4, 3, size, size, generator=g).to(device),
            torch.randint(0, 21, (4, size, size), generator=g).to(device))


def _state(net: nn.Module) -> dict[str, list[float]]:
    bns = [m for m in net.modules() if isinstance(m, BATCHNORMS)]
    return {"mean": torch.cat([m.running_mean for m in bns]).tolist(),
            "var": torch.cat([m.running_var for m in bns]).tolist(),
            "grad": torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]).tolist()}


def _step(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    F.cross_entropy(net(images), labels).backward()  # equal halves: the mean of the halves' means


def _rank(rank: int, backend: str, device_type: str, sync: bool, size: int, folder: str) -> None:
    dist.init_process_group(backend, init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        device = torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu")
        net = _net(device)
        if sync:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        ddp = nn.parallel.DistributedDataParallel(net)
        images, labels = _batch(size, device)
        half = slice(2 * rank, 2 * rank + 2)
        _step(ddp, images[half], labels[half])
        if rank == 0:
            Path(folder, "ranks.json").write_text(json.dumps(_state(net)))
    finally:
        dist.destroy_process_group()


def _relative(a: list[float], b: list[float]) -> float:
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


def compare(backend: str, device_type: str, sync: bool, size: int, timeout: float) -> dict:
    """Run the two processes and the single one; {"status": "ok", relative errors} or {"status": why not}."""
    reference_net = _net(torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu"))
    _step(reference_net, *_batch(size, next(reference_net.parameters()).device))
    reference = _state(reference_net)
    with tempfile.TemporaryDirectory(prefix="syncbn-") as folder:
        t0 = time.perf_counter()
        context = mp.start_processes(_rank, args=(backend, device_type, sync, size, folder), nprocs=2, join=False,
                                     start_method="spawn")
        try:
            while not context.join(timeout=max(1.0, timeout - (time.perf_counter() - t0))):
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"no result after {timeout:.0f} s")
        except Exception as e:  # a backend refusing two ranks on one device raises in the children
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            last = str(e).strip().splitlines()
            reason = next((line for line in reversed(last) if "Error" in line), last[-1] if last else type(e).__name__)
            return {"status": f"failed: {reason[:300]}"}
        ranks = json.loads(Path(folder, "ranks.json").read_text())
    return {"status": "ok", **{f"rel_{key}": _relative(ranks[key], reference[key]) for key in reference}}
