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
batch statistics), BYOL's per-sample loss averaged by DDP, DINO's centre (the teacher's output
all-reduced over the processes: it enters the loss of the NEXT step, so DINO and DINO-Twins take
two forward/backward passes and the second one's gradients are compared) and DINO-Twins' Barlow
Twins term over the gathered crops of every pair (DINO's loss computes its softmaxes in float32
whatever the input, which stays far inside 1e-6). On GPUs SyncBatchNorm (on by default under DDP)
makes the remaining BatchNorm layers global as well.
"""

from __future__ import annotations

import importlib
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
METHODS = ("barlow_twins", "byol", "dino", "dino_twins")
MULTI_CROP = ("dino", "dino_twins")  # 2 global crops of 6 px and 2 local crops of 4 px


class TinyBackbone(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed_dim = width

    def forward(self, x):
        return self.net(x)


def multi_crop(name: str) -> nn.Module:
    """The real DINO / DINO-Twins of the train.py options, with TinyBackbone as the backbone."""
    from unittest import mock

    from common.options import parse_cli

    module = importlib.import_module(f"{name}.train")
    argv = ["--arch", "vit_tiny", "--image-size", "16", "--patch-size", "8", "--drop-path", "0", "--out-dim", "16",
            "--local-crops-number", "2", "--epochs", "4", "--warmup-epochs", "0", "--warmup-teacher-temp-epochs", "0"]
    argv += ["--bt-projector", "16-16"] if name == "dino_twins" else []
    with mock.patch("dino.model.build_backbone", lambda *_, **__: TinyBackbone()):  # student and teacher
        model, _ = module.build(parse_cli(name, module.add_arguments, module.DEFAULTS, argv), steps_per_epoch=2)
    return model


def dino_of(model: nn.Module):
    return getattr(model, "dino", model)


def center_of(model: nn.Module):
    return dino_of(model).loss_fn.center.clone() if hasattr(dino_of(model), "loss_fn") else None


def build(name: str) -> nn.Module:
    torch.manual_seed(0)  # identical initialisation in every process
    if name == "barlow_twins":
        model = BarlowTwins(TinyBackbone(), projector="16-16-16", lambd=0.0051)
    elif name == "byol":
        model = BYOL(TinyBackbone(), hidden_dim=16, out_dim=8, tau=0.99)
    else:
        model = multi_crop(name)
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


def global_batch(name: str = "byol"):
    g = torch.Generator().manual_seed(1)
    sizes = (6, 6, 4, 4) if name in MULTI_CROP else (6, 6)
    return [torch.randn(WORLD * N, 3, s, s, generator=g, dtype=torch.float64) for s in sizes]


def loss_and_gradients(model: nn.Module, views) -> tuple[float, dict]:
    """One forward/backward; DINO's centre reaches the loss one step later, so multi-crop methods
    take a first pass (which moves the centre), then the pass whose gradients are compared."""
    if isinstance(views, list) and len(views) > 2:
        model((views, None), 0)["loss"].backward()
        model.zero_grad(set_to_none=True)
    out = model((views, None), 0)
    out["loss"].backward()
    return out["loss"].item(), gradients(getattr(model, "module", model))  # DDP wraps the model as .module


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        mine = slice(rank * N, (rank + 1) * N)
        for name in METHODS:
            model = build(name)
            ddp = nn.parallel.DistributedDataParallel(model)
            views = [v[mine] for v in global_batch(name)]
            loss, grads = loss_and_gradients(ddp, views if name in MULTI_CROP else tuple(views))
            torch.save((loss, grads, center_of(model)), f"{out_dir}/{name}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(module_tmp):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out = module_tmp("ddp")
    # fork (where there is one) spares each child the import of torch; the process group is only
    # created in the children
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True, start_method=method)
    return {(name, rank): torch.load(out / f"{name}-{rank}.pt")
            for name in METHODS for rank in range(WORLD)}


def single_process(name: str):
    model = build(name)
    views = global_batch(name)
    loss, grads = loss_and_gradients(model, views if name in MULTI_CROP else tuple(views))
    return loss, grads, center_of(model)


@pytest.mark.parametrize("name", METHODS)
def test_ddp_gradients_equal_single_process_gradients_on_the_global_batch(ddp_results, name):
    loss, reference, center = single_process(name)
    assert len(reference) == len([p for p in build(name).parameters() if p.requires_grad])
    # big enough that a wrong scale (e.g. 1/world_size) would be far outside the tolerance
    assert max(g.abs().max().item() for g in reference.values()) > 0.1
    for rank in range(WORLD):
        ddp_loss, grads, ddp_center = ddp_results[(name, rank)]
        assert set(grads) == set(reference)
        if center is not None:  # DINO's centre: the EMA of the teacher's mean over the global batch
            assert center.abs().max() > 0
            torch.testing.assert_close(ddp_center, center, rtol=0, atol=1e-6)  # DINO's loss runs in float32
        for key, g in reference.items():
            torch.testing.assert_close(grads[key], g, rtol=0, atol=1e-6, msg=f"{name} {key} (rank {rank})")
        if name == "barlow_twins":  # every process holds the loss of the global batch
            assert ddp_loss == pytest.approx(loss, abs=1e-9)


def test_sync_bn_is_on_by_default_and_no_sync_bn_turns_it_off():
    from byol import train
    from common.options import parse_cli

    assert parse_cli("byol", train.add_arguments, train.DEFAULTS, []).sync_bn is True
    assert parse_cli("byol", train.add_arguments, train.DEFAULTS, ["--no-sync-bn"]).sync_bn is False
