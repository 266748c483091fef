"""Backbones: dims, stems, rebuild from kwargs, ViT attention, position-embedding interpolation,
stochastic depth."""

import json

import pytest
import torch
from torch import nn

from common.backbones import ARCHS, Attention, BackboneError, DropPath, build_backbone, drop_path
from common.options import ARCH_HELP, ARCH_SIZES

pytestmark = pytest.mark.usefixtures("one_thread")


def _explicit_forward(vit, x):
    """The ViT forward with the explicit-softmax attention path in every block (no SDPA)."""
    x = vit.prepare_tokens(x)
    for blk in vit.blocks:
        y, _ = blk.attn(blk.norm1(x), return_attention=True)
        x = x + y
        x = x + blk.mlp(blk.norm2(x))
    return vit.norm(x)[:, 0]


@pytest.mark.parametrize("arch, dim", [("cnn_tiny", 128), ("cnn_small", 256), ("resnet18", 512), ("resnet50", 2048),
                                       ("vit_mini", 192), ("vit_tiny", 192), ("vit_small", 384), ("vit_base", 768)])
def test_output_dims(arch, dim):
    torch.manual_seed(0)
    # ViT-B's 86M-parameter init takes seconds on a busy CPU; its shapes need no values.
    with torch.device("meta" if arch == "vit_base" else "cpu"):
        m = build_backbone(arch, image_size=32, patch_size=16 if arch != "vit_mini" else 4).eval()
        with torch.no_grad():
            out = m(torch.randn(2, 3, 32, 32))
    assert m.embed_dim == dim and out.shape == (2, dim)
    assert set(m.kwargs) == {"arch", "image_size", "patch_size", "drop_path_rate", "in_chans"}
    assert json.loads(json.dumps(m.kwargs)) == m.kwargs  # goes into config.json / checkpoints as is
    if arch.startswith("resnet"):
        # Every residual branch starts at zero (last BN gamma = 0), so each block starts as identity.
        last_bn = "bn3" if arch == "resnet50" else "bn2"
        blocks = [b for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer]
        assert all((getattr(b, last_bn).weight == 0).all() for b in blocks)
        assert (m.bn1.weight == 1).all()
    if arch.startswith("cnn"):
        # gamma = 1 in every BN (a zero-initialised residual gamma learned slower in short runs)
        assert all((b.bn2.weight == 1).all() for b in m.modules() if type(b).__name__ == "ResidualPair")
        assert m.feature_map(torch.randn(1, 3, 32, 32)).shape == (1, dim, 4, 4)  # 4 stages, 3 poolings


def test_archs_are_the_documented_ones_with_their_sizes():
    assert ARCHS == ("cnn_tiny", "cnn_small", "resnet18", "resnet50", "vit_micro", "vit_mini", "vit_tiny", "vit_small",
                     "vit_base")
    for arch, (documented, _) in ARCH_SIZES.items():  # what --help says of each backbone
        gpu_sized = arch in ("resnet50", "vit_small", "vit_base")  # at the papers' 224 px, patch 16
        with torch.device("meta"):  # counts need no values
            net = build_backbone(arch, image_size=224 if gpu_sized else 32, patch_size=16 if gpu_sized else 4)
        millions = sum(p.numel() for p in net.parameters()) / 1e6
        digits = len(documented.split()[0].split(".")[1])
        assert f"{millions:.{digits}f} M" == documented, arch
        assert f"{arch} ({documented}" in ARCH_HELP


@pytest.mark.parametrize("size", [32, 64])
def test_resnet_small_image_stem(size):
    m = build_backbone("resnet18", image_size=size)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and m.conv1.padding == (1, 1)
    assert isinstance(m.maxpool, nn.Identity) and isinstance(m.fc, nn.Identity)
    # Without the down-sampling stem a 32 px image reaches layer4 at 4x4 (not 1x1).
    shapes = []
    m.layer4.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape)) and None)
    m.eval()(torch.randn(1, 3, 32, 32))
    assert shapes == [(1, 512, 4, 4)]


def test_resnet_standard_stem_above_64px():
    m = build_backbone("resnet50", image_size=96)
    assert m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2)
    assert isinstance(m.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("arch, kwargs", [("resnet18", dict(image_size=32)),
                                          ("vit_tiny", dict(image_size=32, patch_size=8, drop_path_rate=0.1))])
def test_rebuild_from_kwargs_round_trip(arch, kwargs):
    torch.manual_seed(0)
    m = build_backbone(arch, **kwargs)
    torch.manual_seed(1)  # a different init, so equal outputs come from the loaded weights
    rebuilt = build_backbone(**m.kwargs)
    assert rebuilt.kwargs == m.kwargs
    rebuilt.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), rebuilt.eval()(x))


def test_vit_last_selfattention_shape_and_rows():
    torch.manual_seed(0)
    vit = build_backbone("vit_small", image_size=16, patch_size=8).eval()
    assert vit.patch_size == 8
    with torch.no_grad():
        attn = vit.get_last_selfattention(torch.randn(2, 3, 16, 16))
    assert attn.shape == (2, 6, 1 + 4, 1 + 4)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 6, 5))


def test_vit_sdpa_forward_equals_explicit_attention():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", image_size=32, patch_size=8).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fast, slow = vit(x), _explicit_forward(vit, x)
        # get_last_selfattention is the softmax(q k^T * scale) that the explicit path multiplies by v
        tokens = vit.prepare_tokens(x)
        for blk in vit.blocks[:-1]:
            tokens = blk(tokens)
        last = vit.blocks[-1].attn
        B, N, C = tokens.shape
        q, k, _ = last.qkv(vit.blocks[-1].norm1(tokens)).reshape(B, N, 3, 3, C // 3).permute(2, 0, 3, 1, 4)
        by_hand = ((q @ k.transpose(-2, -1)) / (C // 3) ** 0.5).softmax(-1)
        attn = vit.get_last_selfattention(x)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    torch.testing.assert_close(attn, by_hand, atol=1e-6, rtol=0)


def test_attention_with_equal_keys_is_uniform():
    # q.k is the same for every key when q and k are zero: softmax gives 1/N everywhere, and the
    # output is the mean of the values.
    att = Attention(dim=4, num_heads=2)
    with torch.no_grad():
        att.qkv.weight[:8].zero_()
        att.qkv.bias[:8].zero_()
        x = torch.randn(1, 5, 4)
        out, attn = att(x, return_attention=True)
        out_sdpa, _ = att(x)
        v = x @ att.qkv.weight[8:].T + att.qkv.bias[8:]
    torch.testing.assert_close(attn, torch.full((1, 2, 5, 5), 0.2))
    torch.testing.assert_close(out, att.proj(v.mean(1, keepdim=True)).expand(1, 5, 4).detach())
    torch.testing.assert_close(out_sdpa, out)


def test_vit_position_embedding_interpolation():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", image_size=32, patch_size=8).eval()
    assert vit.interpolate_pos_encoding(16, 32, 32) is vit.pos_embed  # trained size: untouched
    with torch.no_grad():
        assert vit(torch.randn(2, 3, 64, 64)).shape == (2, 192)
        assert vit(torch.randn(1, 3, 32, 64)).shape == (1, 192)
        assert vit.get_last_selfattention(torch.randn(1, 3, 64, 64)).shape == (1, 3, 65, 65)
        # Bicubic resizing keeps a constant grid constant and the CLS position as it is.
        vit.pos_embed[:, 1:] = 0.25
        pos = vit.interpolate_pos_encoding(64, 64, 64)
    assert pos.shape == (1, 65, 192)
    torch.testing.assert_close(pos[:, 1:], torch.full((1, 64, 192), 0.25))
    assert torch.equal(pos[:, 0], vit.pos_embed[:, 0])


@pytest.mark.parametrize("arch, size", [("resnet18", 32), ("resnet18", 72), ("vit_tiny", 32)])
def test_one_input_channel(arch, size):
    m = build_backbone(arch, image_size=size, patch_size=8, in_chans=1).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, size, size)).shape == (2, m.embed_dim)
    assert build_backbone(**m.kwargs).kwargs["in_chans"] == 1


def test_drop_path_rates_rise_linearly_and_vanish_in_eval():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", image_size=16, patch_size=8, drop_path_rate=0.2)
    rates = torch.tensor([blk.drop_path.drop_prob for blk in vit.blocks])
    torch.testing.assert_close(rates, torch.linspace(0, 0.2, 12))
    plain = build_backbone("vit_tiny", image_size=16, patch_size=8)
    plain.load_state_dict(vit.state_dict())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert not torch.equal(vit.train()(x), vit(x))  # training: random depth
        torch.testing.assert_close(vit.eval()(x), plain.eval()(x), atol=0, rtol=0)
    assert isinstance(vit.blocks[0].drop_path, DropPath)


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(4000, 3)
    out = drop_path(x, 0.25, training=True)
    per_sample = out[:, 0]
    torch.testing.assert_close(per_sample.unique(), torch.tensor([0.0, 4 / 3]))
    assert (out == per_sample[:, None]).all()  # a sample's whole branch is kept or dropped
    assert abs(out.mean().item() - 1.0) < 0.05
    assert torch.equal(drop_path(x, 0.25, training=False), x)


def test_bad_options_are_one_line_errors():
    with pytest.raises(BackboneError, match="unknown arch 'vit_huge'; choose one of cnn_tiny"):
        build_backbone("vit_huge")
    with pytest.raises(BackboneError, match="not a multiple of patch size 16"):
        build_backbone("vit_tiny", image_size=40)
    with pytest.raises(BackboneError, match="drop_path_rate"):
        build_backbone("vit_tiny", image_size=32, drop_path_rate=1.0)
    with pytest.raises(ValueError, match="in_chans"):
        build_backbone("resnet18", in_chans=0)


def test_lab_lightness_input_mode_round_trips_through_kwargs():
    """The colorization encoder: RGB in, L inside; `build_backbone(**kwargs)` rebuilds it for eval."""
    from colorization.lab import rgb_to_lab
    from common.augment import MEAN, STD

    net = build_backbone("resnet18", image_size=16, in_chans=1, input_mode="lab_l").eval()
    again = build_backbone(**net.kwargs).eval()
    again.load_state_dict(net.state_dict())
    plain = build_backbone("resnet18", image_size=16, in_chans=1).eval()
    plain.load_state_dict(net.state_dict())
    rgb = torch.rand(2, 3, 16, 16)
    x = (rgb - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    lightness = (rgb_to_lab(rgb)[:, :1] - 50) / 100
    with torch.no_grad():
        torch.testing.assert_close(again(x), plain(lightness), atol=1e-4, rtol=1e-4)
    with pytest.raises(BackboneError, match="needs in_chans=1"):
        build_backbone("resnet18", image_size=16, input_mode="lab_l")
