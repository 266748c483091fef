"""Under DDP the parameters must receive exactly the single-process gradient on the global batch.

Two gloo processes on the CPU each hold half of a batch of 2N; after DDP's backward their
gradients must equal those of one process on the whole 2N batch, to 1e-6 (float64, so rounding
is far below that and a wrong scale, e.g. the 1/world_size of a C all-reduced without its
gradient, is far above it).

BatchNorm: SyncBatchNorm does not run on the CPU, so BatchNorm layers that normalise with the
statistics of their own process's half cannot match a single process's statistics on 2N. The
BatchNorm layers of the backbone and projector are therefore put in eval mode here (fixed
statistics). This leaves everything the methods themselves do across processes under test:
Barlow Twins' batch standardisation and cross-correlation over the gathered global batch (always
batch statistics) and BYOL's per-sample loss averaged by DDP. On GPUs `--sync-bn` makes the
remaining BatchNorm layers global as well.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from barlow_twins.model import BarlowTwins
from byol.model import BYOL

N = 4  # per process
WORLD = 2


class TinyBackbone(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed_dim = width

    def forward(self, x):
        return self.net(x)


def build(name: str) -> nn.Module:
    torch.manual_seed(0)  # identical initialisation in every process
    if name == "barlow_twins":
        model = BarlowTwins(TinyBackbone(), projector="16-16-16", lambd=0.0051)
    else:
        model = BYOL(TinyBackbone(), hidden_dim=16, out_dim=8, tau=0.99)
    model.double().train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()  # fixed statistics: see the module docstring
    with torch.no_grad():  # non-trivial statistics, so that eval-mode BN is not the identity
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def global_batch():
    g = torch.Generator().manual_seed(1)
    v1 = torch.randn(WORLD * N, 3, 6, 6, generator=g, dtype=torch.float64)
    v2 = torch.randn(WORLD * N, 3, 6, 6, generator=g, dtype=torch.float64)
    return v1, v2


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        v1, v2 = global_batch()
        mine = slice(rank * N, (rank + 1) * N)
        for name in ("barlow_twins", "byol"):
            model = build(name)
            ddp = nn.parallel.DistributedDataParallel(model)
            out = ddp(((v1[mine], v2[mine]), None), 0)
            out["loss"].backward()
            torch.save((out["loss"].item(), gradients(model)), f"{out_dir}/{name}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out = tmp_path_factory.mktemp("ddp")
    # fork (where there is one) spares each child the import of torch; the process group is only
    # created in the children
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True, start_method=method)
    return {(name, rank): torch.load(out / f"{name}-{rank}.pt")
            for name in ("barlow_twins", "byol") for rank in range(WORLD)}


def single_process(name: str):
    model = build(name)
    v1, v2 = global_batch()
    out = model(((v1, v2), None), 0)
    out["loss"].backward()
    return out["loss"].item(), gradients(model)


@pytest.mark.parametrize("name", ["barlow_twins", "byol"])
def test_ddp_gradients_equal_single_process_gradients_on_the_global_batch(ddp_results, name):
    loss, reference = single_process(name)
    assert len(reference) == len([p for p in build(name).parameters() if p.requires_grad])
    # big enough that a wrong scale (e.g. 1/world_size) would be far outside the tolerance
    assert max(g.abs().max().item() for g in reference.values()) > 0.1
    for rank in range(WORLD):
        ddp_loss, grads = ddp_results[(name, rank)]
        assert set(grads) == set(reference)
        for key, g in reference.items():
            torch.testing.assert_close(grads[key], g, rtol=0, atol=1e-6, msg=f"{name} {key} (rank {rank})")
        if name == "barlow_twins":  # every process holds the loss of the global batch
            assert ddp_loss == pytest.approx(loss, abs=1e-9)
