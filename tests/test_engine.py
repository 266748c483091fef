"""The engine: exact resume (max-steps, kill -9, SIGTERM), NaN guard, wrong checkpoints, DDP."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import toy_method

from common.checkpoint import load_checkpoint
from common.logging import read_metrics

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "tests" / "toy_method.py")
BASE = ["--data", "shapes", "--max-images", "32", "--image-size", "16", "--batch-size", "8", "--epochs", "2"]


def run_toy(out, data_root, *extra):
    return toy_method.main([*BASE, "--data-root", str(data_root), "--out", str(out), *extra])


def run_toy_process(out, data_root, *extra, env=None, check=True):
    proc = subprocess.run([sys.executable, TOY, *BASE, "--data-root", str(data_root), "--out", str(out), *extra],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def assert_same_state(a, b):
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["step"] == cb["step"]
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    for (ka, va), (_, vb) in zip(ca["optimizer"]["state"].items(), cb["optimizer"]["state"].items()):
        for name in va:
            assert torch.equal(torch.as_tensor(va[name]), torch.as_tensor(vb[name])), (ka, name)


@pytest.fixture(scope="module")
def straight(module_tmp, data_root):
    """Reference: 8 steps (2 epochs of 4) in one go."""
    out = module_tmp("straight")
    summary = run_toy(out, data_root)
    assert summary["step"] == 8
    return out


def test_run_directory_contents(straight):
    assert (straight / "config.json").exists()
    assert (straight / "loss.png").exists() and (straight / "diagnostics.png").exists()
    rows = read_metrics(straight / "metrics.jsonl")
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 9))
    assert rows[-1]["event"] == "stop" and rows[-1]["reason"] == "end"
    snaps = sorted(p.name for p in (straight / "snapshots").iterdir())
    assert snaps == ["epoch0000.pt", "epoch0001.pt", "epoch0002.pt"]
    ckpt = load_checkpoint(straight / "checkpoint.pt", method="toy", arch="resnet18")
    assert ckpt["epoch"] == 2 and ckpt["args"]["toy_option"] == 1


def test_schedules_follow_epochs_not_max_steps(straight, tmp_path, data_root):
    run_toy(tmp_path, data_root, "--max-steps", "3")
    short = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    full = [r["lr"] for r in read_metrics(straight / "metrics.jsonl") if "loss" in r]
    assert short == full[:3]
    # warm-up of 1 epoch (4 steps) to lr*batch/256, then a cosine: peak after step 4
    peak = 0.05 * 8 / 256
    assert full[0] == pytest.approx(0.0) and max(full) == pytest.approx(peak)


def test_max_steps_resume_is_bit_identical(straight, tmp_path, data_root):
    assert run_toy(tmp_path, data_root, "--max-steps", "3")["step"] == 3
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert run_toy(tmp_path, data_root, "--max-steps", "6")["step"] == 6  # resumes from 3, mid-epoch
    assert run_toy(tmp_path, data_root)["step"] == 8
    assert_same_state(tmp_path / "checkpoint.pt", straight / "checkpoint.pt")
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 9))  # no duplicated rows after resuming


def test_kill_minus_9_then_resume_is_bit_identical(straight, tmp_path, data_root):
    proc = run_toy_process(tmp_path, data_root, "--save-every", "2", env={"TOY_KILL_AT": "5"}, check=False)
    assert proc.returncode == -9
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
    assert run_toy(tmp_path, data_root)["step"] == 8
    assert_same_state(tmp_path / "checkpoint.pt", straight / "checkpoint.pt")


def test_sigterm_saves_and_resumes(straight, tmp_path, data_root):
    proc = run_toy_process(tmp_path, data_root, env={"TOY_SIGTERM_AT": "2"}, check=False)
    assert proc.returncode != 0
    assert "re-run the same command to resume" in proc.stderr
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3  # the step in flight completes
    assert run_toy(tmp_path, data_root)["step"] == 8
    assert_same_state(tmp_path / "checkpoint.pt", straight / "checkpoint.pt")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("TOY_NAN_AT", "5")
    with pytest.raises(SystemExit) as e:
        run_toy(tmp_path, data_root, "--save-every", "2", "--log-every", "1")
    message = str(e.value)
    assert "NaN" in message and "step 4" in message and "toy hint" in message and "\n" not in message
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_checkpoint_of_another_method_is_refused(straight, tmp_path, data_root):
    ckpt = load_checkpoint(straight / "checkpoint.pt")
    ckpt["method"] = "byol"
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    with pytest.raises(SystemExit) as e:
        run_toy(tmp_path, data_root)
    assert "is a byol checkpoint, not toy" in str(e.value) and "\n" not in str(e.value)


def test_resume_never_and_missing_resume_path(straight, tmp_path, data_root):
    with pytest.raises(SystemExit, match="does not exist"):
        run_toy(tmp_path, data_root, "--resume", str(tmp_path / "nope.pt"))
    assert run_toy(tmp_path, data_root, "--resume", str(straight / "checkpoint.pt"))["step"] == 8


def test_bad_option_combinations(tmp_path, data_root, capsys):
    with pytest.raises(SystemExit):
        run_toy(tmp_path, data_root, "--warmup-epochs", "5")
    assert "--warmup-epochs 5.0 exceeds --epochs 2" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="larger than the 32 training images"):
        run_toy(tmp_path, data_root, "--batch-size", "64")


def test_torchrun_two_process_gloo(tmp_path, data_root):
    """The same engine under torchrun: DDP on gloo, rank-0-only writing, sharded batches."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", TOY, *BASE,
           "--data-root", str(data_root), "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 8 and len(ckpt["rng"]) == 2
    config = (tmp_path / "config.json").read_text()
    assert '"world_size": 2' in config
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 9))  # written once, by rank 0


def test_run_directory_lock_refuses_a_second_run_and_leaves_no_trace(tmp_path):
    from common.engine import run_directory_lock

    with run_directory_lock(tmp_path / "run"):
        with pytest.raises(SystemExit, match="another run is using .*choose another --out"):
            with run_directory_lock(tmp_path / "run"):
                pass
    with run_directory_lock(tmp_path / "run"):  # released with its holder
        pass
    with pytest.raises(SystemExit):  # a refused fresh run removes the folder it made for the lock
        with run_directory_lock(tmp_path / "fresh"):
            raise SystemExit("error: refused")
    assert not (tmp_path / "fresh").exists()


def test_full_checkpoints_load_safely_and_restore_every_generator(tmp_path):
    import random

    import numpy as np

    from common.checkpoint import save_checkpoint
    from common.runtime import rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3), np.random.normal()  # a cached gaussian too
    save_checkpoint({"rng": [rng_state()], "lr": np.float64(0.5), "table": np.arange(3)}, tmp_path / "c.pt")
    draws = (random.random(), np.random.normal(), np.random.rand(), torch.rand(2))
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)  # no numpy object left in the file
    assert ckpt["lr"] == 0.5 and type(ckpt["lr"]) is float and torch.equal(ckpt["table"], torch.arange(3))
    set_rng_state(ckpt["rng"][0])
    again = (random.random(), np.random.normal(), np.random.rand(), torch.rand(2))
    assert draws[:3] == again[:3] and torch.equal(draws[3], again[3])


def test_option_differences_and_output_problems(tmp_path):
    from common.options import option_differences, output_problem

    saved = {"out_dim": 65536, "arch": "vit_tiny", "max_steps": 3, "global_crops_scale": [0.4, 1.0]}
    now = {"out_dim": 1024, "arch": "vit_tiny", "max_steps": 9, "global_crops_scale": (0.4, 1.0)}
    assert option_differences(saved, now).startswith("--out-dim 1024 differs from the checkpoint's 65536; use ")
    (tmp_path / "f").write_text("")
    assert "is a file" in output_problem(tmp_path / "f")
    assert "which is a file" in output_problem(tmp_path / "f" / "x" / "y")
    assert "under /proc" in output_problem("/proc/self/x") and "under /sys" in output_problem("/sys/run")
    assert output_problem(tmp_path / "new" / "run") is None
