"""Where and how a run executes: device, seeds, distributed processes and mixed precision.

A single process needs no distributed set-up at all. Under `torchrun` (RANK / WORLD_SIZE in the
environment) the process group is initialised with NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SystemExit("error: --device mps was asked for but MPS is not available; use --device cpu or auto")
    if name not in ("cuda", "mps", "cpu"):
        raise SystemExit(f"error: unknown --device {name!r}; choose auto, cuda, mps or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: derive numpy/python seeds from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# --- distributed helpers: identities in a single process -------------------------------------

def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over processes (a new tensor; no gradient flows through it)."""
    if not is_distributed():
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / world_size()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        # Every process holds the same global loss, so the gradient of this process's slice is
        # the sum over processes; DDP then divides by the world size, which restores the
        # single-process gradient on the global batch.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // world_size()
        return grad[rank() * n:(rank() + 1) * n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` along dim 0 over processes, differentiably (see _GatherWithGrad)."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


# --- the runtime ------------------------------------------------------------------------------

def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """auto = bf16 where the GPU supports it, fp16 (with a GradScaler) on older GPUs, off on CPU."""
    if choice == "off":
        return None
    if choice == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if choice == "fp16" and device.type != "cuda":
        raise SystemExit("error: --amp fp16 needs a CUDA GPU; use --amp bf16 or --amp off on CPU")
    return torch.bfloat16 if choice == "bf16" else torch.float16


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None = None
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling; bf16 has fp32's exponent range.
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)


def setup_runtime(args) -> Runtime:
    """Device, seeds, determinism, TF32 and (under torchrun) the process group."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    device = resolve_device(args.device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if launched:
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        if not is_distributed():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rt = Runtime(device=device, amp_dtype=amp_dtype(args.amp, device), rank=rank(),
                 world_size=world_size(), local_rank=local_rank)
    # Each process seeds alike: model initialisation must be identical before DDP's broadcast,
    # and data order is sharded by the sampler, not by the seed.
    seed_everything(args.seed)
    if getattr(args, "deterministic", False):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 on Ampere and newer
        torch.backends.cudnn.allow_tf32 = True
    return rt


def cleanup_runtime() -> None:
    if is_distributed():
        dist.destroy_process_group()


def rng_state() -> dict:
    """Every global generator's state as tensors and plain Python values, so that a checkpoint
    holding it loads with torch.load(weights_only=True): numpy's MT19937 state as its key array
    (a tensor) and ints, python's `random` state as a tuple of ints."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                             np_state["has_gauss"], np_state["cached_gaussian"]))
    else:  # the tuple of checkpoints written before ssl-lab stored plain types (--trust-checkpoint)
        np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng():
    """Run the block without moving any global generator: evaluation inside training (validation,
    the kNN monitor, figures) must leave the training run's random stream exactly where it was."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
