"""Released weights (common/pretrained.py): every official DINO layout and torchvision's ResNets are
recognised from their keys and shapes, load into the matching backbone and go through the eval
scripts; position embeddings are resized with the official formula. No network: the files are
built here with the official key layout (names and shapes), named weights are checked with a
stubbed torch.hub."""

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from common import pretrained
from common.backbones import build_backbone, interpolate_pos_embed
from common.checkpoint import CheckpointError, load_backbone
from eval import attention, cli, jaccard, knn

pytestmark = pytest.mark.usefixtures("one_thread")

# facebookresearch/dino's ViT-S/16 state dict: 4 stem tensors, 12 per block, the final norm.
OFFICIAL_VIT_KEYS = (["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
                     + [f"blocks.{i}.{n}" for i in range(12) for n in (
                         "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                         "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                         "mlp.fc2.weight", "mlp.fc2.bias")]
                     + ["norm.weight", "norm.bias"])


def official_full_checkpoint(state: dict, teacher_offset: float = 1.0) -> dict:
    """main_dino.py's save_dict: DDP + MultiCropWrapper prefixes, a head, an argparse Namespace."""
    head = {"head.mlp.0.weight": torch.zeros(2, 2), "head.last_layer.weight_g": torch.ones(1, 2)}
    return {"student": {f"module.{k}": v for k, v in ({f"backbone.{k}": v for k, v in state.items()} | head).items()},
            "teacher": {f"backbone.{k}": v + teacher_offset for k, v in state.items()} | head,
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=16, lr=0.0005),
            "dino_loss": {"center": torch.zeros(1, 2)}}


@pytest.fixture(scope="module")
def vit_small_files(module_tmp):
    folder = module_tmp("released")
    torch.manual_seed(0)
    state = build_backbone("vit_small", image_size=224, patch_size=16).state_dict()
    torch.save(state, folder / "dino_deitsmall16_pretrain.pth")
    torch.save(official_full_checkpoint(state), folder / "dino_deitsmall16_pretrain_full_checkpoint.pth")
    return folder, state


def test_the_official_vit_small_layouts_are_recognised_and_load_exactly(vit_small_files):
    folder, state = vit_small_files
    assert list(state) == OFFICIAL_VIT_KEYS and state["pos_embed"].shape == (1, 197, 384)
    net, ckpt = load_backbone(folder / "dino_deitsmall16_pretrain.pth")
    assert ckpt["backbone_kwargs"] == dict(arch="vit_small", image_size=224, patch_size=16, drop_path_rate=0.0,
                                           in_chans=3)
    assert ckpt["source"] == "an official DINO ViT backbone: vit_small/16" and ckpt["method"] == "dino"
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items()) and not net.training

    net, ckpt = load_backbone(folder / "dino_deitsmall16_pretrain_full_checkpoint.pth")
    assert ckpt["source"] == "the teacher of an official DINO training checkpoint: vit_small/16"
    assert ckpt["epoch"] == 100
    assert all(torch.equal(net.state_dict()[k], v + 1) for k, v in state.items())  # the teacher, not the student


@pytest.mark.parametrize("arch, patch, expected", [("vit_small", 8, "vit_small/8"), ("vit_base", 16, "vit_base/16"),
                                                   ("vit_base", 8, "vit_base/8"), ("resnet50", 16, "resnet50")])
def test_arch_and_patch_size_come_from_the_shapes(arch, patch, expected):
    with torch.device("meta"):  # shapes only: no memory, no time
        state = build_backbone(arch, image_size=224, patch_size=patch).state_dict()
    kwargs, _, method, what = pretrained.parse(state)
    assert (kwargs["arch"], kwargs["patch_size"], kwargs["image_size"]) == (arch, patch, 224)
    assert what.endswith(expected) and method == "dino"
    kwargs, kept, _, what = pretrained.parse(official_full_checkpoint(state, teacher_offset=0))
    assert what == f"the teacher of an official DINO training checkpoint: {expected}" and set(kept) == set(state)


def test_torchvision_and_dino_resnet_state_dicts(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth")
    net, ckpt = load_backbone(tmp_path / "resnet18.pth")
    assert ckpt["source"] == "a torchvision ResNet state dict (its fc classifier dropped): resnet18"
    x = torch.randn(2, 3, 64, 64)
    tv.fc = nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(net(x), tv(x))  # same network, same 512-d pooled features

    dino_r50 = build_backbone("resnet50", image_size=224).state_dict()  # fc = Identity, as DINO's
    torch.save(dino_r50, tmp_path / "dino_resnet50_pretrain.pth")
    net, ckpt = load_backbone(tmp_path / "dino_resnet50_pretrain.pth")
    assert ckpt["source"] == "an official DINO ResNet backbone: resnet50" and net.embed_dim == 2048


def test_unknown_layouts_and_unreadable_files_are_one_line_errors(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="keys start encoder.weight") as e:
        load_backbone(tmp_path / "other.pth")
    assert "\n" not in str(e.value)
    (tmp_path / "broken.pth").write_bytes(b"not a file of tensors")
    with pytest.raises(CheckpointError, match="broken.pth"):  # the message of common/checkpoint.py
        load_backbone(tmp_path / "broken.pth")
    deep = build_backbone("vit_tiny", image_size=32, patch_size=8).state_dict()
    deep = {k: v for k, v in deep.items() if not k.startswith("blocks.11.")}  # 11 blocks: no such ViT
    torch.save(deep, tmp_path / "vit11.pth")
    with pytest.raises(CheckpointError, match="11 blocks is not one of"):
        load_backbone(tmp_path / "vit11.pth")


def test_named_weights_download_once_from_the_official_url(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, map_location=None, weights_only=False, **_):
        calls.append((url, weights_only))
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        torch.save({}, tmp_path / "checkpoints" / url.rsplit("/", 1)[-1])
        return {}

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    path = cli.checkpoint_argument("dino_vits16")
    assert path == str(tmp_path / "checkpoints" / "dino_deitsmall16_pretrain.pth")
    assert cli.checkpoint_argument("dino_vits16") == path and cli.checkpoint_argument("runs/x.pt") == "runs/x.pt"
    assert calls == [("https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
                      True)]
    assert set(pretrained.RELEASED) == {"dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8", "dino_resnet50"}

    def offline(*_, **__):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(argparse.ArgumentTypeError, match="downloading dino_resnet50 .* failed"):
        cli.checkpoint_argument("dino_resnet50")


def official_interpolate(pos_embed: torch.Tensor, w: int, h: int, patch: int) -> torch.Tensor:
    """facebookresearch/dino vision_transformer.py interpolate_pos_encoding, line for line."""
    N = pos_embed.shape[1] - 1
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def test_position_embedding_follows_the_official_formula():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 14 * 14, 8)
    ours = interpolate_pos_embed(pos, 30, 30)
    torch.testing.assert_close(ours, official_interpolate(pos, 480, 480, 16), rtol=0, atol=0)
    # a non-square input (the official code calls dim 2 "w"): rows 20, columns 30
    torch.testing.assert_close(interpolate_pos_embed(pos, 20, 30), official_interpolate(pos, 320, 480, 16))
    sized = F.interpolate(pos[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2), size=(30, 30), mode="bicubic")
    sized = sized.permute(0, 2, 3, 1).reshape(1, 900, 8)
    assert (ours[:, 1:] - sized).norm() / sized.norm() > 0.01  # the size= resize is a different function

    net = build_backbone("vit_tiny", image_size=32, patch_size=8).eval()
    x = torch.randn(1, 3, 48, 64)
    tokens = net.patch_embed(x)
    expected = torch.cat((net.cls_token, tokens), 1) + official_interpolate(net.pos_embed, 48, 64, 8)
    torch.testing.assert_close(net.prepare_tokens(x), expected)


def test_intermediate_layers_are_the_normalised_tokens_of_the_last_blocks():
    torch.manual_seed(0)
    net = build_backbone("vit_tiny", image_size=16, patch_size=8).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        last4 = net.get_intermediate_layers(x, 4)
        tokens, manual = net.prepare_tokens(x), []
        for blk in net.blocks:
            tokens = blk(tokens)
            manual.append(net.norm(tokens))
        assert len(last4) == 4 and all(torch.allclose(a, b) for a, b in zip(last4, manual[-4:]))
        torch.testing.assert_close(last4[-1][:, 0], net(x))


def test_init_copies_released_weights_into_every_backbone(tmp_path):
    torch.manual_seed(0)
    released = build_backbone("vit_tiny", image_size=64, patch_size=8).state_dict()
    torch.save(released, tmp_path / "vit.pth")

    class TwoNetworks(nn.Module):  # e.g. DINO's student and teacher, trained at 32 px
        def __init__(self, arch="vit_tiny"):
            super().__init__()
            self.student = build_backbone(arch, image_size=32, patch_size=8)
            self.teacher = build_backbone(arch, image_size=32, patch_size=8)

    method = TwoNetworks()
    summary = pretrained.init_backbones(method, tmp_path / "vit.pth")
    assert summary == "initialised 2 backbone(s) from an official DINO ViT backbone: vit_tiny/8"
    for net in (method.student, method.teacher):
        assert torch.equal(net.blocks[3].attn.qkv.weight, released["blocks.3.attn.qkv.weight"])
        torch.testing.assert_close(net.pos_embed, official_interpolate(released["pos_embed"], 32, 32, 8))
    with pytest.raises(CheckpointError, match="--arch is resnet18"):
        pretrained.init_backbones(TwoNetworks("resnet18"), tmp_path / "vit.pth")


@pytest.fixture(scope="module")
def tiny_released(module_tmp):
    """A ViT-T/8 at 16 px in the official backbone and training-checkpoint layouts, and a DINO
    ResNet-50 backbone (its 7×7 ImageNet stem) in the official layout."""
    folder = module_tmp("tiny")
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", image_size=16, patch_size=8).state_dict()
    torch.save(vit, folder / "vit.pth")
    torch.save(official_full_checkpoint(vit), folder / "full.pth")
    torch.save(build_backbone("resnet50", image_size=224).state_dict(), folder / "resnet50.pth")
    return folder


def run(main, argv, capsys) -> dict:
    result = main([str(a) for a in argv])
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == json.loads(json.dumps(result))
    return result, out


@pytest.mark.parametrize("layout", ["vit", "full", "resnet50"])
def test_released_layouts_go_through_knn_jaccard_and_attention(tiny_released, layout, data_root, tmp_path, capsys):
    base = ["--checkpoint", tiny_released / f"{layout}.pth", "--data", "shapes", "--data-root", data_root,
            "--device", "cpu", "--image-size", 16]
    r, out = run(knn.main, base + ["--out", tmp_path / "knn", "--max-train", 40, "--max-test", 20, "--k", 5], capsys)
    assert r["n_test"] == 20 and 0 <= r["top1"] <= 100 and out[0].startswith("loaded ")
    assert r["loaded"].endswith({"vit": "vit_tiny/8", "full": "vit_tiny/8", "resnet50": "resnet50"}[layout])
    if layout == "resnet50":  # no attention: the ViT-only scripts say so in one line
        with pytest.raises(SystemExit, match="needs a ViT checkpoint"):
            jaccard.main([str(a) for a in base + ["--out", tmp_path / "j"]])
        return
    r, _ = run(jaccard.main, base + ["--out", tmp_path / "j", "--max-images", 4, "--num-examples", 1], capsys)
    assert r["n_images"] + r["n_skipped_no_object"] == 4 and r["loaded"].startswith(
        "the teacher" if layout == "full" else "an official DINO ViT")
    r, _ = run(attention.main, base + ["--out", tmp_path / "a", "--num-images", 1], capsys)
    assert r["num_heads"] == 3 and r["images"][0]["patch_grid"] == [2, 2]


def test_init_starts_a_training_run_from_released_weights(tiny_released, data_root, tmp_path, capsys):
    from dino import train

    train.main(["--data", "shapes", "--data-root", str(data_root), "--arch", "vit_tiny", "--image-size", "16",
                "--patch-size", "8", "--out-dim", "16", "--local-crops-number", "0", "--batch-size", "8",
                "--max-images", "8", "--epochs", "1", "--max-steps", "1", "--warmup-epochs", "0", "--workers", "0",
                "--device", "cpu", "--eval-every", "0", "--init", str(tiny_released / "full.pth"),
                "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "initialised 2 backbone(s) from the teacher of an official DINO training checkpoint" in out
    start = torch.load(tmp_path / "run" / "snapshots" / "epoch0000.pt", weights_only=True)["backbone"]
    _, ckpt = load_backbone(tiny_released / "full.pth")
    assert all(torch.equal(start[k], v) for k, v in ckpt["backbone"].items())  # the run began from them
