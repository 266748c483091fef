"""The terminal a run shows (start banner, epoch lines that stay, an ETA that counts to --max-steps,
--tensorboard as an optional dependency) and the reference lines of the diagnostics figures."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from common import logging as run_logging
from common.figures import diagnostic_dim, plot_metrics, reference, title_and_label
from common.options import base_parser, parse_args


def test_duration_reads_at_a_glance():
    assert [run_logging.duration(s) for s in (0, 12.4, 245, 3 * 3600 + 125)] == ["0s", "12s", "4m05s", "3h02m"]


def test_eta_counts_to_the_step_the_run_stops_at(tmp_path, monkeypatch):
    clock = iter([100.0, 110.0])  # construction, then one ETA: 10 s for the first 2 steps
    monkeypatch.setattr(run_logging.time, "time", lambda: next(clock))
    logger = run_logging.RunLogger(tmp_path, True, total_steps=1000, start_step=0, stop_at=4)
    assert logger.eta(2) == "10s"  # 2 steps left at 5 s each, not 998


def test_banner_and_epoch_lines_stay_on_screen(tmp_path, capsys):
    logger = run_logging.RunLogger(tmp_path, True, total_steps=8, start_step=0, stop_at=6)
    logger.banner("dino: shapes, 2 epochs", {"run directory": str(tmp_path), "steps": "8 in 2 epochs"})
    logger.log({"step": 4, "epoch": 1.0, "loss": 3.5, "img_per_s": 12.3})
    logger.end_epoch({"step": 4, "epoch": 1, "val_loss": 3.25, "knn_top1": 40.0, "knn_queries": 200}, epochs=2)
    logger.end_epoch({"step": 6, "epoch": 2}, epochs=2)  # nothing new to record: a line, no metrics row
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "dino: shapes, 2 epochs"
    assert out[1].split() == ["run", "directory", str(tmp_path)]
    assert out[2].split() == ["steps", "8", "in", "2", "epochs"]
    epoch = next(line for line in out if line.startswith("epoch 1/2"))
    for part in ("step 4/6", "loss 3.5", "val loss 3.25", "kNN 40.0 % on 200 queries", "12 img/s", "elapsed",
                 "eta"):
        assert part in epoch, (part, epoch)
    assert any(line.startswith("epoch 2/2 | step 6/6") and "eta" not in line for line in out)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 4] and rows[1]["knn_queries"] == 200


def test_a_disabled_logger_is_silent(tmp_path, capsys):
    logger = run_logging.RunLogger(tmp_path, False, 8, 0)
    logger.banner("x", {"a": "b"})
    logger.end_epoch({"step": 4, "epoch": 1}, epochs=2)
    assert capsys.readouterr().out == "" and not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_without_the_package_is_a_one_line_error(capsys):
    parser = base_parser("dino")
    with pytest.raises(SystemExit):
        parse_args(parser, ["--tensorboard"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--tensorboard needs the tensorboard package; pip install tensorboard" in err


def test_tensorboard_is_off_by_default():
    assert parse_args(base_parser("dino"), []).tensorboard is False


def test_reference_lines_of_the_diagnostics():
    byol = {"method": "byol", "args": {"out_dim": 256}, "embed_dim": 512}
    barlow = {"method": "barlow_twins", "args": {"projector": "512-512-2048"}}
    twins = {"method": "dino_twins", "args": {"bt_projector": "2048-2048-1024", "out_dim": 2048}}
    assert diagnostic_dim("z_std", byol) == 256 and diagnostic_dim("feature_std", byol) == 512
    assert diagnostic_dim("z_std", barlow) == 2048 and diagnostic_dim("z_std", twins) == 1024
    assert reference("z_std", byol)[0] == pytest.approx(1 / 16)
    assert reference("feature_std", {"args": {}}) is None  # unknown d: no line rather than a wrong one
    assert reference("teacher_entropy", twins)[0] == pytest.approx(math.log(2048))
    assert reference("c_on_diag", barlow)[0] == 1.0 and reference("c_off_diag", barlow)[0] == 0.0
    assert reference("kl", {})[0] == 0.0 and reference("loss", {}) is None
    assert title_and_label("teacher_entropy") == ("entropy of DINO's teacher output", "entropy (nats)")
    assert title_and_label("my_metric") == ("my metric", "my metric")


def test_run_figures_draw_the_references(tmp_path):
    rows = [{"step": s, "epoch": s / 4, "loss": 5 - s / 4, "z_std": 0.05, "tau": 0.99} for s in range(1, 9)]
    rows.append({"step": 4, "epoch": 1, "knn_top1": 30.0, "knn_queries": 200})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.json").write_text(json.dumps({"method": "byol", "args": {"out_dim": 256}}))
    written = {p.name for p in plot_metrics(tmp_path)}
    assert written == {"loss.png", "knn.png", "diagnostics.png"}
