"""./run_all.sh end to end (smoke profile) and the report it writes; the driver's plan and the report's
arithmetic on hand-made cases."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from eval import pipeline, report

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("# ssl-lab report", "## Reading", "## Results", "## Training curves", "## Collapse diagnostics",
            "## t-SNE over epochs", "## Nearest-neighbour retrieval", "## Attention maps and masks",
            "## Colourisations", "## Jigsaw puzzles", "## Cross-correlation", "## Settings", "## Runs", "## Not run")
VIT_METHODS = [m for m in pipeline.METHODS if pipeline.TRAIN["smoke"][m][0].startswith("vit")]


def run_all(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["bash", str(REPO / "run_all.sh"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def statuses(out: Path) -> dict[str, str]:
    return {s["id"]: s["status"] for s in json.loads((out / "pipeline.json").read_text())["steps"]}


def images(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


@pytest.fixture(scope="module")
def smoke(module_tmp, data_root):
    """One smoke run shared by the tests below, which then run it again in the same folders."""
    tmp = module_tmp("run_all")
    args = ["--profile", "smoke", "--runs", str(tmp / "runs"), "--out", str(tmp / "reports"),
            "--data-root", str(data_root)]
    first = run_all(*args)
    return {"args": args, "out": tmp / "reports", "runs": tmp / "runs", "first": first}


def test_smoke_profile_writes_every_table_and_figure(smoke):
    first, out = smoke["first"], smoke["out"]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert set(statuses(out).values()) == {"ok"}
    md = (out / "REPORT.md").read_text()
    for section in SECTIONS:
        assert f"\n{section}\n" in f"\n{md}", section
    # One table row per method, with a number in every column that applies to it.
    for method in pipeline.METHODS:
        row = next(line for line in md.splitlines() if line.startswith(f"| {report.TITLES[method]} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        numbers = [c for c in cells[2:] if re.fullmatch(r"\d+\.\d", c)]
        assert len(numbers) == (7 if method in VIT_METHODS else 6), row
    assert "| random init (baseline) | resnet18 |" in md
    assert "| raw pixels (baseline) | 16 px |" in md
    # The tables' numbers, per seed, in results.json; one verdict per method in the Reading.
    results = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in results["records"]} >= {*pipeline.METHODS, "raw pixels", "random init resnet18"}
    assert all(r["knn_top1"] is not None and r["n_test"]["knn_top1"] == 48 for r in results["records"]
               if r["method"] in pipeline.METHODS)
    reading = md.split("## Reading", 1)[1].split("## Results", 1)[0]
    for method in pipeline.METHODS:
        assert re.search(rf"^- \*\*{re.escape(report.TITLES[method])}\*\* \(baseline: .+\): "
                         r"(learned|not distinguishable|below)", reading, re.M), method
    # Every referenced figure exists beside the report, and the expected ones are referenced.
    refs = images(md)
    assert refs and all((out / ref).is_file() for ref in refs)
    for name in ("figures/results.png", "figures/curves.png", "figures/collapse.png"):
        assert name in refs
    for method in pipeline.METHODS:
        for name in ("tsne.png", "retrieval.png", "run-loss.png"):
            assert f"figures/{method}-s0/{name}" in refs, (method, name)
    for method in VIT_METHODS:
        for name in ("attention.png", "jaccard.png"):
            assert f"figures/{method}-s0/{name}" in refs, (method, name)
    assert "figures/colorization-s0/colorizations.png" in refs
    assert "figures/jigsaw-s0/puzzles.png" in refs
    assert any(r.startswith("figures/barlow_twins-s0/cross_correlation") for r in refs)
    # Commands, versions and wall times of the runs; nothing silently dropped.
    assert md.count("```\npython ") == len(pipeline.METHODS)
    assert "torch 2." in md and "training wall time" in md
    assert "Every step of this invocation succeeded." in md


def test_second_run_is_a_no_op(smoke):
    out = smoke["out"]
    before = (out / "REPORT.md").stat().st_mtime_ns
    again = run_all(*smoke["args"])
    assert again.returncode == 0, again.stdout[-3000:]
    assert set(statuses(out).values()) == {"done"}
    assert "is up to date" in again.stdout
    assert (out / "REPORT.md").stat().st_mtime_ns == before


def test_a_lost_result_is_recomputed_alone(smoke):
    result = next(smoke["runs"].glob("byol/*/eval/knn/knn.json"))
    result.unlink()
    again = run_all(*smoke["args"])
    assert again.returncode == 0, again.stdout[-3000:]
    ran = {k for k, v in statuses(smoke["out"]).items() if v != "done"}
    assert ran == {"byol/s0/knn"} and result.exists()


def test_a_failing_step_is_reported_and_the_rest_still_counts(smoke):
    failed = run_all(*smoke["args"], "--extra", "jigsaw.linear=--epochs 0")
    assert failed.returncode == 1
    st = statuses(smoke["out"])
    assert st.pop("jigsaw/s0/linear") == "failed"
    assert set(st.values()) == {"done"}
    md = (smoke["out"] / "REPORT.md").read_text()
    not_run = md.split("## Not run", 1)[1]
    assert "**jigsaw/s0/linear** — failed" in not_run and "--epochs must be >= 1" in not_run
    row = next(line for line in md.splitlines() if line.startswith("| Jigsaw |"))
    assert "*failed*" in row and re.search(r"\| \d+\.\d \|", row)  # the kNN of the same run still shows
    assert "jigsaw/s0/linear" in failed.stderr


# --- the plan, without running it -----------------------------------------------------------------

def test_plan_has_every_evaluation_of_every_method(tmp_path):
    cfg = pipeline.parse_args(["--profile", "smoke", "--runs", str(tmp_path), "--seeds", "0", "1"])
    steps = pipeline.plan(cfg)
    ids = {s.id for s in steps}
    for seed in (0, 1):
        for method in pipeline.METHODS:
            kinds = ["train", "knn", "linear", "finetune", "tsne", "retrieval"]
            kinds += ["attention", "jaccard"] if method in VIT_METHODS else []
            assert {f"{method}/s{seed}/{k}" for k in kinds} <= ids
            assert f"{method}/s{seed}/attention" in ids or method not in VIT_METHODS
        assert {f"baselines/resnet18/s{seed}/{k}" for k in ("knn", "linear", "scratch")} <= ids
        # raw pixels at the one size every smoke method trains at, needing no training
        assert {s.id for s in steps if s.row == "raw pixels" and s.seed == seed} == \
            {f"baselines/pixels16/s{seed}/knn", f"baselines/pixels16/s{seed}/linear"}
    by_id = {s.id: s for s in steps}
    assert "--label-fraction 0.1 1" in by_id["dino/s0/linear"].command()
    assert "--label-fraction 0.2" in by_id["byol/s1/finetune"].command()
    assert "--from-scratch" in by_id["baselines/vit_tiny/s0/scratch"].command()
    pixels = by_id["baselines/pixels16/s1/knn"]
    assert "--raw-pixels --image-size 16" in pixels.command() and "--checkpoint" not in pixels.command()
    assert not pixels.needs and "--seed 1" in pixels.command()
    assert "--seed 1" in by_id["byol/s1/train"].command()
    assert by_id["byol/s0/train"].out != by_id["byol/s1/train"].out
    assert all((REPO / s.script).exists() for s in steps)
    # Each evaluation needs its run's training, and comes after it.
    order = [s.id for s in steps]
    for s in steps:
        assert all(order.index(d) < order.index(s.id) for d in s.needs)


def test_cpu_profile_also_trains_dino_twins_on_the_small_vit(tmp_path):
    cfg = pipeline.parse_args(["--profile", "cpu", "--runs", str(tmp_path)])
    by_id = {s.id: s for s in pipeline.plan(cfg)}
    cnn, vit = by_id["dino_twins/s0/train"], by_id["dino_twins/vit_micro/s0/train"]
    assert (cnn.row, vit.row) == ("dino_twins", "dino_twins vit_micro") and cnn.out != vit.out
    # the method's cpu recipe with the ViT's own options on top: each option once, the last value wins
    assert "--arch vit_micro" in vit.command() and "--patch-size 4" in vit.command()
    assert vit.args.count("--epochs") == 1 and vit.args[vit.args.index("--epochs") + 1] == "8"
    for run in (cnn, vit, by_id["dino/s0/train"]):  # DINO and DINO-Twins see the same 16 px local crops
        assert run.args[run.args.index("--local-crops-size") + 1] == "16"
    assert vit.args[vit.args.index("--drop-path") + 1] == "0" and "--drop-path" not in cnn.args
    assert "--local-crops-number 2" in vit.command() and "--bt-projector 512-512-512" in vit.command()
    for kind in ("knn", "linear", "finetune", "tsne", "retrieval", "attention", "jaccard"):
        assert by_id[f"dino_twins/vit_micro/s0/{kind}"].needs == [vit.id]
    assert "dino_twins/s0/attention" not in by_id  # a CNN has no self-attention
    assert by_id["dino_twins/vit_micro/s0/linear"].after == ["dino_twins/vit_micro/s0/knn"]
    base = by_id["baselines/vit_micro/s0/knn"]  # the random ViT: the ViT run's initialisation snapshot
    assert base.row == "random init vit_micro" and str(vit.out / "snapshots" / "epoch0000.pt") in base.command()
    assert by_id["baselines/vit_micro/s0/scratch"].row == "supervised vit_micro"


def test_colorization_is_judged_against_its_own_lightness_network(tmp_path):
    """Colorization's backbone sees L only: its random-init and supervised baselines are that network
    (its own epoch-0 snapshot), not the RGB one the other methods start from."""
    cfg = pipeline.parse_args(["--profile", "cpu", "--runs", str(tmp_path)])
    by_id = {s.id: s for s in pipeline.plan(cfg)}
    colorization, dino = by_id["colorization/s0/train"], by_id["dino/s0/train"]
    for kind, row in (("knn", "random init cnn_tiny-L"), ("linear", "random init cnn_tiny-L"),
                      ("scratch", "supervised cnn_tiny-L")):
        lab, rgb = by_id[f"baselines/cnn_tiny-L/s0/{kind}"], by_id[f"baselines/cnn_tiny/s0/{kind}"]
        assert (lab.row, lab.needs, rgb.needs) == (row, [colorization.id], [dino.id])
    assert str(colorization.out / "snapshots" / "epoch0000.pt") in by_id["baselines/cnn_tiny-L/s0/knn"].command()
    assert str(dino.out / "snapshots" / "epoch0000.pt") in by_id["baselines/cnn_tiny/s0/knn"].command()
    assert {pipeline.baseline_key(m, "cnn_tiny") for m in pipeline.METHODS} == {"cnn_tiny", "cnn_tiny-L"}


def test_options_errors_are_one_line():
    with pytest.raises(SystemExit, match="unknown method.*simclr"):
        pipeline.parse_args(["--profile", "smoke", "--methods", "dino,simclr"])
    with pytest.raises(SystemExit, match="must look like"):
        pipeline.parse_args(["--profile", "smoke", "--extra", "dino.bogus=--x 1"])
    cfg = pipeline.parse_args(["--profile", "smoke", "--methods", "dino,byol", "byol",
                               "--extra", "dino.train=--out-dim 128", "--extra", "knn=--k 5"])
    assert cfg.methods == ["dino", "byol"]
    by_id = {s.id: s for s in pipeline.plan(cfg)}
    assert by_id["dino/s0/train"].command().endswith("--out-dim 128")
    assert "--out-dim 128" not in by_id["byol/s0/train"].command()
    assert by_id["byol/s0/knn"].command().endswith("--k 5")


# --- the report on a hand-made manifest -------------------------------------------------------------

def test_mean_and_sample_std():
    assert report.fmt([1.0, 2.0, 3.0]) == "2.0 ± 1.0 (n=3)"  # std = sqrt(((1-2)^2 + (3-2)^2) / 2) = 1
    assert report.fmt([70.25]) == "70.2"
    assert report.fmt([]) == "—"


def add_step(steps: list, tmp_path, id_, row, kind, seed=0, status="ok", result=None, files=None, wall_s=1.5,
             command=None):
    """One step of a fake manifest: its folder, result JSON, extra files and marker."""
    out = tmp_path / id_.replace("/", "_")
    out.mkdir()
    marker = {"status": status, "wall_s": wall_s, "reason": "exit code 1: error: boom" if status == "failed" else ""}
    if result is not None:
        (out / f"{kind}.json").write_text(json.dumps(result))
        marker["result"] = str(out / f"{kind}.json")
    for name, text in (files or {}).items():
        (out / name).write_text(text)
    steps.append({"id": id_, "row": row, "kind": kind, "seed": seed, "script": f"eval/{kind}.py",
                  "command": command or f"python eval/{kind}.py", "out": str(out), "status": status,
                  "reason": marker["reason"], "wall_s": wall_s, "marker": marker})


def test_report_aggregates_seeds_and_lists_what_did_not_run(tmp_path):
    steps = []

    def step(id_, row, kind, seed, status, result=None):
        add_step(steps, tmp_path, id_, row, kind, seed, status, result)

    for seed, top1 in ((0, 60.0), (1, 64.0)):
        step(f"byol/s{seed}/train", "byol", "train", seed, "ok")
        step(f"byol/s{seed}/knn", "byol", "knn", seed, "ok", {"top1": 0, "by_k": {"20": {"top1": top1}}})
        step(f"byol/s{seed}/linear", "byol", "linear", seed, "ok",
             {"by_label_fraction": {"0.1": {"top1": 40.0 + seed}, "1": {"top1": 50.0}}})
        step(f"baselines/resnet18/s{seed}/scratch", "supervised resnet18", "scratch", seed, "ok", {"top1": 30.0})
    step("byol/s0/finetune", "byol", "finetune", 0, "failed")
    manifest = {"command": "./run_all.sh --methods byol", "profile": "smoke", "methods": ["byol"], "seeds": [0, 1],
                "runs": str(tmp_path), "data": "shapes", "eval_data": "shapes", "mask_data": "shapes",
                "device": "cpu", "launcher": "fork", "started": "now", "wall_s": 3.0, "host": {},
                "settings": {"common_train": "--epochs 1", "train": {"byol": ["resnet18", ""]},
                             "eval": {}, "protocol": pipeline.PROTOCOL},
                "steps": steps}
    md = report.write_report(manifest, tmp_path / "reports").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| BYOL |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "62.0 ± 2.8 (n=2)"       # kNN@20: mean 62, std sqrt(8) = 2.83
    assert cells[3] == "40.5 ± 0.7 (n=2)"       # linear 10 %
    assert cells[4] == "50.0 ± 0.0 (n=2)"       # linear 100 %
    assert cells[5] == "*failed*"                # fine-tune 20 %
    assert cells[6] == "30.0 ± 0.0 (n=2)"       # supervised from scratch, same backbone
    assert cells[8] == "—"                       # Jaccard does not apply to a ResNet
    not_run = md.split("## Not run", 1)[1]
    assert "**byol/s0/finetune** — failed: exit code 1: error: boom" in not_run
    for method in ("DINO", "Barlow Twins", "DINO-Twins", "Jigsaw", "Colorization"):
        assert f"**{method}** — not selected" in not_run
    assert all((tmp_path / "reports" / ref).is_file() for ref in images(md))
