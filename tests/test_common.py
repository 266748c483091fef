"""Schedules, EMA, checkpoints and the sampler, on small known cases."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.ema import ema_update
from common.loader import ResumableSampler
from common.schedules import cosine_schedule


def test_cosine_schedule_warmup_and_endpoints():
    s = cosine_schedule(1.0, 0.1, epochs=4, steps_per_epoch=5, warmup_epochs=1, start_warmup_value=0.0)
    assert len(s) == 20
    np.testing.assert_allclose(s[:5], [0.0, 0.2, 0.4, 0.6, 0.8])
    assert s[5] == pytest.approx(1.0)
    # half cosine over the 15 remaining steps: value at t is final + (base-final)(1+cos(pi t/15))/2
    t = np.arange(15)
    np.testing.assert_allclose(s[5:], 0.1 + 0.45 * (1 + np.cos(np.pi * t / 15)))
    assert np.all(np.diff(s[5:]) < 0)


def test_cosine_schedule_constant_and_momentum_to_one():
    np.testing.assert_allclose(cosine_schedule(0.04, 0.04, 3, 7), 0.04)
    m = cosine_schedule(0.996, 1.0, 10, 10)
    assert m[0] == pytest.approx(0.996) and m[-1] < 1.0 and m[-1] > 0.99999


def test_ema_update_parameters_and_buffers():
    target, online = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        target.weight.copy_(torch.tensor([1.0, 2.0]))
        online.weight.copy_(torch.tensor([3.0, 6.0]))
        target.running_mean.copy_(torch.tensor([0.0, 10.0]))
        online.running_mean.copy_(torch.tensor([1.0, 0.0]))
        online.num_batches_tracked.fill_(7)
    ema_update(target, online, 0.75)
    torch.testing.assert_close(target.weight.data, torch.tensor([1.5, 3.0]))  # .75*1+.25*3, .75*2+.25*6
    torch.testing.assert_close(target.running_mean, torch.tensor([0.25, 7.5]))
    assert target.num_batches_tracked.item() == 7


def _state(v):
    return {"method": "toy", "arch": "resnet18", "backbone_kwargs": {}, "backbone": {"w": torch.full((3,), v)},
            "epoch": 0, "step": int(v), "args": {}}


def test_atomic_save_survives_a_kill_during_the_save(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(1.0), path)
    script = f"""
import os, signal, torch
from common.checkpoint import save_checkpoint
real_save = torch.save
def dying_save(obj, f):
    f.write(b"PK-partial-bytes" * 1000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
save_checkpoint({{"step": 2}}, {str(path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["backbone"]["w"], torch.ones(3))


def test_load_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an ssl-lab checkpoint"):
        load_checkpoint(foreign)
    good = tmp_path / "good.pt"
    save_checkpoint(_state(1.0), good)
    with pytest.raises(CheckpointError, match="trained with --arch resnet18, not vit_tiny"):
        load_checkpoint(good, arch="vit_tiny")


def test_sampler_resumes_mid_epoch_and_shards():
    full = list(ResumableSampler(20, 4, seed=3))
    assert len(full) == 20 and sorted(i for _, i in full) == list(range(20))
    s = ResumableSampler(20, 4, seed=3)
    s.set_epoch(0, start_batch=2)
    assert list(s) == full[8:]
    s.set_epoch(1)
    assert [i for _, i in s] != [i for _, i in full]
    r0, r1 = ResumableSampler(20, 4, 3, rank=0, world_size=2), ResumableSampler(20, 4, 3, rank=1, world_size=2)
    ranks = [i for _, i in r0], [i for _, i in r1]
    e0, e1 = ResumableSampler(5, 4, 3, 0, 2, shuffle=False), ResumableSampler(5, 4, 3, 1, 2, shuffle=False)
    assert [i for _, i in e0] == [0, 2, 4] and [i for _, i in e1] == [1, 3, 0]  # padded: equal counts
    assert len(e0) == len(e1) == 3
    for b in range(5):  # each global batch is split between the two processes
        assert sorted(ranks[0][2 * b:2 * b + 2] + ranks[1][2 * b:2 * b + 2]) == sorted(
            i for _, i in full[4 * b:4 * b + 4])


def test_runtime_amp_choices():
    from common.runtime import amp_dtype
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        amp_dtype("fp16", torch.device("cpu"))


def test_views_are_a_function_of_seed_epoch_batch_and_rank(data_root):
    from common.augment import TwoViews
    from common.datasets import build_dataset
    from common.loader import Loaded, view_generator

    ds = build_dataset("shapes", str(data_root), "train")
    views = TwoViews(32)
    loaded = Loaded(ds, views.load)
    image, label = loaded[(1, 7)]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == ds.targets[7]
    batch = torch.stack([loaded[(0, i)][0] for i in range(4)])
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = views(batch, view_generator(5, 1, 3))
    assert torch.equal(torch.rand(1), before)  # the global RNG is untouched
    b = views(batch, view_generator(5, 1, 3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for other in (view_generator(5, 2, 3), view_generator(5, 1, 4), view_generator(5, 1, 3, rank=1),
                  view_generator(6, 1, 3), view_generator(5, -1, 3)):
        assert not torch.equal(a[0], views(batch, other)[0])

