"""Released weights: recognise the layout of a weights file and build the backbone it fits.

Every eval script's `--checkpoint` and every train.py's `--init` accept, besides this project's
checkpoints (common/checkpoint.py):

- the official DINO backbones (facebookresearch/dino, hubconf.py): a bare state dict of its
  VisionTransformer (`cls_token`, `pos_embed`, `patch_embed.proj.weight`, `blocks.N.…`, `norm.…`,
  exactly this project's ViT names) or of a torchvision ResNet-50 without its `fc`;
- the official DINO training checkpoints (`…_full_checkpoint.pth`): `{"teacher", "student", …}`,
  keys prefixed `module.` (DDP) and `backbone.` (MultiCropWrapper); the teacher is taken, as the
  official eval_knn.py / eval_linear.py do by default (`--checkpoint_key teacher`), the head dropped;
- a torchvision ResNet-18/50 state dict (its ImageNet `fc` classifier is dropped).

The architecture is read from the shapes: embedding width and depth pick the ViT size, the patch
embedding's kernel the patch size, the position embedding's grid the training image size
(224 for every released DINO ViT); bottleneck blocks and the layer3 depth tell ResNet-50 from
ResNet-18. `dino_vits16`, `dino_vits8`, `dino_vitb16`, `dino_vitb8` and `dino_resnet50` name the
released backbones: they are downloaded once from the official URLs into torch.hub's cache.
Every file is read with `weights_only=True` (tensors and plain containers only).
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from common.checkpoint import CheckpointError
from common.options import RELEASED  # the names and official URLs (torch-free: the CLIs check names with it)


class PretrainedError(CheckpointError):
    """Weights whose layout is not recognised or that do not fit (one-line message)."""


def fetch(name: str) -> Path:
    """The local file of released weights `name` (downloaded once through torch.hub's cache)."""
    url = RELEASED[name]
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.exists():
        try:
            torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
        except Exception as e:  # no network, a proxy, a full disk: one line, not a traceback
            raise PretrainedError(f"downloading {name} from {url} failed ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); download it by hand and "
                                  "pass the file") from None
    return path


def resolve(checkpoint: str | os.PathLike) -> Path:
    """A released-weights name → its downloaded file; anything else is taken as a path."""
    return fetch(str(checkpoint)) if str(checkpoint) in RELEASED else Path(checkpoint)


def read(path: str | os.PathLike):
    """torch.load with weights_only=True; DINO's training checkpoints also hold their argparse
    Namespace of options, which is allowed (it rebuilds as a plain attribute bag)."""
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe is None:  # torch 2.4
            torch.serialization.add_safe_globals([argparse.Namespace])
            return torch.load(path, map_location="cpu", weights_only=True)
        with safe([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as e:
        raise PretrainedError(f"{path} is not a readable weights file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None


def _backbone_keys(state: dict) -> dict:
    """Tensors only, without the `module.` (DDP) and `backbone.` (DINO's MultiCropWrapper) prefixes
    and without DINO's projection head (`head.`)."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        if torch.is_tensor(v) and not k.startswith("head."):
            out[k.removeprefix("backbone.")] = v
    return out


def _vit_kwargs(state: dict) -> dict:
    from common.backbones import VIT_CONFIGS

    dim = state["cls_token"].shape[-1]
    depth = 1 + max(int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    arch = next((a for a, (d, n, _) in VIT_CONFIGS.items() if (d, n) == (dim, depth)), None)
    if arch is None:
        known = ", ".join(f"{a} ({d}-d, {n} blocks)" for a, (d, n, _) in VIT_CONFIGS.items())
        raise PretrainedError(f"a ViT with {dim}-d tokens and {depth} blocks is not one of {known}")
    proj = state["patch_embed.proj.weight"]  # D × C × p × p
    grid = state["pos_embed"].shape[1] - 1
    side = math.isqrt(grid)
    if side * side != grid:
        raise PretrainedError(f"the position embedding has {grid} patch positions, not a square grid")
    return dict(arch=arch, image_size=side * proj.shape[-1], patch_size=proj.shape[-1], drop_path_rate=0.0,
                in_chans=proj.shape[1])


def _resnet_kwargs(state: dict) -> dict:
    bottleneck = "layer1.0.conv3.weight" in state
    blocks = 1 + max(int(m[1]) for k in state if (m := re.match(r"layer3\.(\d+)\.", k)))
    arch = {(False, 2): "resnet18", (True, 6): "resnet50"}.get((bottleneck, blocks))
    if arch is None:
        raise PretrainedError(f"a ResNet with {'bottleneck' if bottleneck else 'basic'} blocks and {blocks} "
                              "blocks in layer3 is neither ResNet-18 nor ResNet-50, the ResNets this project builds")
    conv1 = state["conv1.weight"]
    # a 7×7 stem is the ImageNet one; a 3×3 one is this project's small-image stem (<= 64 px)
    return dict(arch=arch, image_size=224 if conv1.shape[-1] == 7 else 64, patch_size=16, drop_path_rate=0.0,
                in_chans=conv1.shape[1])


def describe(kwargs: dict) -> str:
    return f"{kwargs['arch']}/{kwargs['patch_size']}" if kwargs["arch"].startswith("vit") else kwargs["arch"]


def parse(obj, source: str = "the file") -> tuple[dict, dict, str, str]:
    """(backbone kwargs, backbone state dict, method, what was taken) of a loaded weights object."""
    if not isinstance(obj, dict):
        raise PretrainedError(f"{source} holds a {type(obj).__name__}, not a state dict")
    if "teacher" in obj and isinstance(obj["teacher"], dict):
        state, what, method = obj["teacher"], "the teacher of an official DINO training checkpoint", "dino"
    else:
        state, what, method = obj, None, None
    state = _backbone_keys(state)
    if {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= set(state):
        kwargs = _vit_kwargs(state)
        what, method = what or "an official DINO ViT backbone", method or "dino"
    elif {"conv1.weight", "layer4.0.conv1.weight"} <= set(state):
        kwargs = _resnet_kwargs(state)
        if "fc.weight" in state:  # torchvision's ImageNet classifier; DINO's ResNet has fc = Identity
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            what = what or "a torchvision ResNet state dict (its fc classifier dropped)"
            method = method or "torchvision"
        else:
            what, method = what or "an official DINO ResNet backbone", method or "dino"
    else:
        keys = ", ".join(list(state)[:4]) or "no tensors"
        raise PretrainedError(f"{source} is neither an ssl-lab checkpoint nor released weights this project knows "
                              f"(DINO ViT/ResNet-50 backbones or training checkpoints, torchvision ResNets); its "
                              f"keys start {keys}")
    return kwargs, state, method, f"{what}: {describe(kwargs)}"


def load_released(path: str | os.PathLike, obj=None):
    """(backbone in eval mode, an ssl-lab-like checkpoint dict) from released weights at `path`."""
    from common.backbones import build_backbone

    obj = read(path) if obj is None else obj
    kwargs, state, method, what = parse(obj, str(path))
    backbone = build_backbone(**kwargs)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as e:
        raise PretrainedError(f"{path}: {what} does not load ({str(e).splitlines()[0]})") from None
    print(f"loaded {what}", flush=True)
    ckpt = {"format": "released", "method": method, "arch": kwargs["arch"], "backbone_kwargs": kwargs,
            "backbone": state, "epoch": obj.get("epoch"), "step": None,
            "args": {"image_size": kwargs["image_size"]}, "source": what}
    return backbone.eval(), ckpt


def init_backbones(module: torch.nn.Module, checkpoint) -> str:
    """Load released weights (or an ssl-lab checkpoint's backbone) into every backbone of a method
    (`--init`; e.g. DINO's student and teacher, BYOL's online and target networks). A ViT trained
    at another image size gets its position embedding resized as DINO does. Returns a summary."""
    from common.backbones import interpolate_pos_embed
    from common.checkpoint import load_backbone

    net, ckpt = load_backbone(resolve(checkpoint))
    source = ckpt.get("source") or f"the backbone of the {ckpt.get('method')} checkpoint {checkpoint}"
    state = net.state_dict()
    targets = [m for m in module.modules() if isinstance(getattr(m, "kwargs", None), dict) and "arch" in m.kwargs]
    if not targets:
        raise PretrainedError("--init: this method has no backbone built by common.backbones")
    for m in targets:
        if m.kwargs["arch"] != ckpt["arch"]:
            raise PretrainedError(f"--init holds a {ckpt['arch']} but --arch is {m.kwargs['arch']}; "
                                  f"train with --arch {ckpt['arch']}")
        mine = dict(state)
        if "pos_embed" in mine:
            if m.patch_size != net.patch_size:
                raise PretrainedError(f"--init has patch size {net.patch_size}; train with --patch-size "
                                      f"{net.patch_size}")
            if mine["pos_embed"].shape != m.pos_embed.shape:  # another training image size
                side = math.isqrt(m.pos_embed.shape[1] - 1)
                mine["pos_embed"] = interpolate_pos_embed(mine["pos_embed"], side, side)
        try:
            m.load_state_dict(mine)
        except RuntimeError as e:
            hint = "; a ResNet's 7×7 ImageNet stem needs --image-size above 64" if "conv1" in str(e) else ""
            raise PretrainedError(f"--init: {source} does not fit this backbone "
                                  f"({str(e).splitlines()[0][:200]}){hint}") from None
    return f"initialised {len(targets)} backbone(s) from {source}"
