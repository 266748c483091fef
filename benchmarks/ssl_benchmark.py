"""Quality and speed of a joint-embedding method in one command.

    python benchmarks/ssl_benchmark.py --method byol --recipe cpu --data cifar10 \\
        --data-root data/cifar10-subset

1. trains the method through its own `train.py` entry (the same `engine.main` wiring, options and
   defaults) into a run directory under runs/bench/;
2. reads the training throughput (source images/s) from metrics.jsonl: the median of `img_per_s`
   over the rows logged after the first epoch or the first 10 % of the steps, whichever is shorter;
3. measures, in the same process, the backbone's pure forward+backward throughput: random tensors
   at the training image size, the same per-step batch, device, AMP and memory format (channels
   last for ResNets) as the engine; warm-up iterations excluded, median of the timed ones;
4. evaluates weighted kNN (k = 20, T = 0.07, train split = bank, test split = queries) of the
   trained backbone, of the same network at initialisation (snapshots/epoch0000.pt) and of raw
   pixels (flattened, standardised per dimension, the same kNN);
5. writes <run>/benchmark.json and updates the method's table in docs/benchmarks.md.

ratio = training source images/s ÷ backbone fwd+bwd images/s at the global-crop size.
ideal = 1 / Σ_views cost, where a view of side s costs (s/S)² with gradients (forward+backward)
and (s/S)²/3 without (a teacher / target forward), S = the global crop size.
efficiency = ratio ÷ ideal: the share of the step time that is essential backbone work.
Recipes and their reasoning: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from argparse import Namespace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's code first (docs/ARCHITECTURE.md)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from common.options import CROP_SCALE  # noqa: E402

K, TEMPERATURE = 20, 0.07  # the DINO kNN protocol (headline k)
METHODS = {"dino": "dino.train", "byol": "byol.train", "barlow_twins": "barlow_twins.train",
           "dino_twins": "dino_twins.train"}
DEFAULT_DOC = REPO / "docs" / "benchmarks.md"

# --- recipes ------------------------------------------------------------------------------------
# `train` holds train.py options (dest names); `bench` the benchmark's own settings. The reasons
# for each value are in benchmarks/README.md. "auto" workers = the machine's cores minus two.

_SMOKE_TRAIN = dict(arch="resnet18", image_size=16, batch_size=16, epochs=1, warmup_epochs=0, max_images=32,
                    workers=0, eval_every=1, log_every=1)
_SMOKE_BENCH = dict(bench_warmup=1, bench_iters=2, knn_max_train=64, knn_max_test=32)

# CPU: the CPU-sized `cnn_tiny` (0.3 M parameters) at 32 px, batch 128, AdamW at a peak lr of 2e-3
# (base 4e-3 per 256), one warm-up epoch: the settings of common/recipes.py (the cpu recipe that learns
# the embedded shapes), with the papers' colour jitter, since CIFAR's colours carry class information.
# Each method's epochs fill about 5 minutes of a 2-core CPU (10 CPU-minutes). `cnn_tiny` rather than
# the wider `cnn_small`: it runs 3x the steps in that time, and on cifar10-subset Barlow Twins then
# reaches kNN 43.3 % in 16 epochs against 41.5 % for 8 epochs of `cnn_small` in 6.6 minutes
# (docs/benchmarks.md).
_CPU_TRAIN = dict(arch="cnn_tiny", image_size=32, batch_size=128, optimizer="adamw", lr=4e-3, warmup_epochs=1,
                  workers=1, eval_every=4, log_every=10)
_CPU_BENCH = dict(bench_warmup=3, bench_iters=10, knn_max_train=None, knn_max_test=None)

# GPU: the papers' settings at 224 px, a few hundred steps in bf16; schedules still follow --epochs.
_GPU_TRAIN = dict(image_size=224, batch_size=128, epochs=100, max_steps=300, amp="bf16", workers="auto",
                  eval_every=0, log_every=10)
_GPU_BENCH = dict(bench_warmup=10, bench_iters=30, knn_max_train=None, knn_max_test=None)

RECIPES = {
    "smoke": {
        "byol": dict(train={**_SMOKE_TRAIN, "hidden_dim": 64, "out_dim": 32}, bench=_SMOKE_BENCH),
        "barlow_twins": dict(train={**_SMOKE_TRAIN, "projector": "64-64-64"}, bench=_SMOKE_BENCH),
        "dino": dict(train={**_SMOKE_TRAIN, "out_dim": 64, "local_crops_number": 2}, bench=_SMOKE_BENCH),
        "dino_twins": dict(train={**_SMOKE_TRAIN, "out_dim": 64, "local_crops_number": 2,
                                  "warmup_teacher_temp_epochs": 0, "bt_projector": "64-64-64"}, bench=_SMOKE_BENCH),
    },
    "cpu": {
        "byol": dict(train={**_CPU_TRAIN, "epochs": 12, "weight_decay": 1e-4, "tau": 0.97, "hidden_dim": 1024,
                            "out_dim": 256}, bench=_CPU_BENCH),
        "barlow_twins": dict(train={**_CPU_TRAIN, "epochs": 16, "lr_biases": 4e-3, "weight_decay": 1e-4,
                                    "projector": "1024-1024-1024"}, bench=_CPU_BENCH),
        # DINO's multi-crop step costs about twice a two-view step: fewer epochs in the same time
        "dino": dict(train={**_CPU_TRAIN, "epochs": 10, "out_dim": 1024, "use_bn_in_head": True,
                            "momentum_teacher": 0.99, "local_crops_number": 2}, bench=_CPU_BENCH),
        "dino_twins": dict(train={**_CPU_TRAIN, "epochs": 8, "out_dim": 1024, "use_bn_in_head": True,
                                  "momentum_teacher": 0.99, "local_crops_number": 2, "local_crops_size": 16,
                                  "warmup_teacher_temp_epochs": 0, "bt_projector": "1024-1024-1024"},
                           bench=_CPU_BENCH),
    },
    "gpu": {
        "dino": dict(train={**_GPU_TRAIN, "arch": "vit_small", "patch_size": 16, "local_crops_number": 6,
                            "drop_path": 0.1}, bench=_GPU_BENCH),
        "dino_twins": dict(train={**_GPU_TRAIN, "arch": "vit_small", "patch_size": 16, "local_crops_number": 6,
                                  "drop_path": 0.1}, bench=_GPU_BENCH),
        "byol": dict(train={**_GPU_TRAIN, "arch": "resnet50"}, bench=_GPU_BENCH),
        "barlow_twins": dict(train={**_GPU_TRAIN, "arch": "resnet50"}, bench=_GPU_BENCH),
    },
}
OVERRIDES = ("epochs", "max_steps", "arch", "image_size", "batch_size", "device", "amp", "workers", "seed")


def to_argv(options: dict) -> list[str]:
    """{"image_size": 16, "use_bn_in_head": True, "norm_last_layer": False} -> CLI words."""
    words = []
    for dest, value in options.items():
        flag = "--" + dest.replace("_", "-")
        if value is None:
            continue
        if value is True:
            words.append(flag)
        elif value is False:
            words.append("--no-" + dest.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return words


def default_workers() -> int:
    return max(1, min(16, (os.cpu_count() or 2) - 2))


# --- the throughput ratio --------------------------------------------------------------------------

def view_cost(side: int, global_side: int, grad: bool) -> float:
    """Backbone cost of one view relative to a forward+backward at the global size: (s/S)², and a
    third of that for a forward without gradients (backward ≈ 2 forwards)."""
    area = (side / global_side) ** 2
    return area if grad else area / 3


def method_views(method: str, args) -> list[dict]:
    """The views one source image costs in `method`'s step: side, gradients, count."""
    from common.augment import crop_sizes

    S = args.image_size
    if method in ("byol",):  # online network on both views, target network (no grad) on both
        return [dict(view="online", side=S, grad=True, count=2), dict(view="target", side=S, grad=False, count=2)]
    if method == "barlow_twins":  # one network, both views with gradients
        return [dict(view="twin", side=S, grad=True, count=2)]
    if method in ("dino", "dino_twins"):
        global_side, local_side = crop_sizes(S)
        views = [dict(view="student global", side=global_side, grad=True, count=2)]
        if args.local_crops_number:
            views.append(dict(view="student local", side=local_side, grad=True, count=args.local_crops_number))
        if getattr(args, "dino_weight", 1.0) > 0:  # DINO-Twins with --dino-weight 0 builds no teacher
            views.append(dict(view="teacher global", side=global_side, grad=False, count=2))
        return views
    raise ValueError(f"no view model for method {method!r}")


def ideal_ratio(views: list[dict], global_side: int) -> float:
    return 1.0 / sum(v["count"] * view_cost(v["side"], global_side, v["grad"]) for v in views)


def throughput_ratios(train_img_per_s: float, backbone_img_per_s: float, ideal: float) -> dict:
    ratio = train_img_per_s / backbone_img_per_s
    return {"ratio": ratio, "ideal_ratio": ideal, "efficiency": ratio / ideal}


def train_throughput(rows: list[dict], steps_per_epoch: int) -> dict:
    """Median source images/s over the metrics rows whose interval starts after the warm-up: the
    first epoch or the first 10 % of the steps run, whichever is shorter (data-loader start-up,
    allocator and cudnn warm-up)."""
    timed = [r for r in rows if "img_per_s" in r and "step" in r]
    if not timed:
        raise ValueError("metrics.jsonl has no img_per_s rows; did the run train at least one step?")
    steps = max(r["step"] for r in timed)
    skip = min(steps_per_epoch, math.ceil(0.1 * steps))
    kept, previous = [], 0
    for r in timed:
        if previous >= skip:
            kept.append(r["img_per_s"])
        previous = r["step"]
    excluded = bool(kept)
    kept = kept or [r["img_per_s"] for r in timed]
    return {"img_per_s": statistics.median(kept), "rows": len(kept), "warmup_steps_excluded": skip if excluded else 0,
            "steps": steps}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backbone_throughput(args, device: torch.device, amp_dtype, warmup: int, iters: int) -> dict:
    """Images/s of the student's backbone alone: forward + backward on random tensors at the
    training size and per-step batch, as the engine runs it (AMP, channels_last for ResNets)."""
    from common.backbones import build_backbone

    backbone = build_backbone(args.arch, args.image_size, args.patch_size, args.drop_path).to(device).train()
    channels_last = args.arch.startswith("resnet") and device.type != "mps"
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        backbone.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = backbone(x)
        out.float().mean().backward()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    result = {"img_per_s": args.batch_size / seconds, "median_step_s": seconds, "warmup_iters": warmup,
              "timed_iters": iters, "batch_size": args.batch_size, "image_size": args.image_size,
              "channels_last": channels_last, "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off"}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


# --- kNN and baselines ------------------------------------------------------------------------

def knn_of_backbone(backbone, bank_set, query_set, image_size, device, max_train, max_test, workers) -> dict:
    from eval.knn import KNNMonitor

    monitor = KNNMonitor(bank_set, query_set, image_size, batch_size=256, workers=workers, device=device,
                         k=K, T=TEMPERATURE, max_bank=max_train, max_query=max_test)
    return monitor(backbone.to(device))


def knn_of_pixels(bank_set, query_set, size: int, max_train, max_test, workers) -> dict:
    """Raw pixels at `size`: flattened, standardised with the bank's per-dimension mean and std,
    then the same kNN (cosine on L2-normalised vectors)."""
    from common.augment import eval_transform
    from eval.features import extract_features, subset_indices
    from eval.knn import knn_accuracy

    transform, flat = eval_transform(size), nn.Flatten()
    bank, bank_y = extract_features(flat, bank_set, subset_indices(len(bank_set), max_train), transform,
                                    256, workers, "cpu")
    query, query_y = extract_features(flat, query_set, subset_indices(len(query_set), max_test), transform,
                                      256, workers, "cpu")
    bank, bank_y = bank[bank_y >= 0], bank_y[bank_y >= 0]
    mean, std = bank.mean(0), bank.std(0).clamp_min(1e-6)
    num_classes = max(len(bank_set.classes), int(bank_y.max()) + 1, int(query_y.max()) + 1)
    top1, top5 = knn_accuracy((bank - mean) / std, bank_y, (query - mean) / std, query_y, K, TEMPERATURE,
                              num_classes)
    return {"knn_top1": top1, "knn_top5": top5, "size": size}


def native_size(dataset) -> int | None:
    """The side of the dataset's images when they are square (e.g. 32 for CIFAR), else None."""
    width, height = dataset[0][0].size
    return width if width == height else None


def evaluate(run_dir: Path, args, device, opts) -> dict:
    from common.checkpoint import load_backbone
    from common.datasets import build_dataset

    bank_set = build_dataset(args.data, args.data_root, "train")
    query_set = build_dataset(args.data, args.data_root, "test")
    caps = (opts.knn_max_train, opts.knn_max_test)
    workers = 0 if device.type == "cpu" else args.workers
    result = {"protocol": {"k": K, "T": TEMPERATURE, "bank": "train split", "queries": "test split",
                           "image_size": args.image_size, "max_train": caps[0], "max_test": caps[1]}}
    for key, path in (("trained", run_dir / "checkpoint.pt"), ("random_init", run_dir / "snapshots" / "epoch0000.pt")):
        backbone, ckpt = load_backbone(path, device)
        result[key] = {**knn_of_backbone(backbone, bank_set, query_set, args.image_size, device, *caps, workers),
                       "checkpoint": str(path), "step": ckpt["step"]}
        del backbone
    # Pixels at the training size (what the network sees) and at the native size of small images;
    # never above 64 px, where raw-pixel kNN is slow and meaningless.
    sizes = {min(args.image_size, 64)}
    native = native_size(bank_set)
    if native is not None and native <= 64:
        sizes.add(native)
    pixels = [knn_of_pixels(bank_set, query_set, s, *caps, workers) for s in sorted(sizes)]
    result["raw_pixels"] = {str(p["size"]): p for p in pixels}
    result["raw_pixels_best"] = max(pixels, key=lambda p: p["knn_top1"])
    return result


# --- records -----------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict:
    info = {"device": str(device), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if hasattr(os, "sched_getaffinity"):
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def knn_by_epoch(rows: list[dict]) -> list[dict]:
    return [{"epoch": r["epoch"], "step": r["step"], "knn_top1": r["knn_top1"], "knn_top5": r.get("knn_top5")}
            for r in rows if "knn_top1" in r]


DOC_COLUMNS = ("recipe", "device", "setting", "date", "wall time", "kNN top-1 trained", "random init",
               "raw pixels", "margin", "kNN top-1 by epoch", "train img/s", "backbone fwd+bwd img/s", "ratio",
               "ideal ratio", "efficiency", "peak GPU memory")
KEY_COLUMNS = 3  # a row is replaced when recipe, device and setting match


def doc_row(result: dict) -> list[str]:
    a, knn, tp = result["args"], result["knn"], result["throughput"]
    hw = result["hardware"]
    device = hw.get("gpu") or f"CPU {hw.get('cpu_affinity', hw['cpu_count'])} cores ({hw['cpu']})"
    amp = tp["backbone"]["amp"]
    setting = (f"{a['arch']} {a['image_size']} px, batch {a['batch_size']}, {a['epochs']} ep, "
               f"{a['optimizer']} lr {a['lr']:g}")
    if a.get("crop_scale") and tuple(a["crop_scale"]) != CROP_SCALE:
        setting += ", crops {:g}–{:g}".format(*a["crop_scale"])
    if a.get("max_steps") is not None:
        setting += f", ≤ {a['max_steps']} steps"
    setting += ", " + " + ".join(f"{v['count']}×{v['side']}{'' if v['grad'] else ' (no grad)'}"
                                 for v in result["views"])
    if amp != "off":
        setting += f", {amp}"
    raw = " / ".join(f"{p['knn_top1']:.1f} ({s} px)" for s, p in knn["raw_pixels"].items())
    best_baseline = max(knn["random_init"]["knn_top1"], knn["raw_pixels_best"]["knn_top1"])
    by_epoch = ", ".join(f"{int(r['epoch'])}: {r['knn_top1']:.1f}" for r in result["knn_by_epoch"]) or "—"
    peak = result.get("peak_memory_gib")
    return [result["recipe"], device, setting, result["date"], f"{result['wall_time_s'] / 60:.1f} min",
            f"{knn['trained']['knn_top1']:.1f}", f"{knn['random_init']['knn_top1']:.1f}", raw,
            f"{knn['trained']['knn_top1'] - best_baseline:+.1f}", by_epoch, f"{tp['train']['img_per_s']:.1f}",
            f"{tp['backbone']['img_per_s']:.1f}", f"{tp['ratio']:.3f}", f"{tp['ideal_ratio']:.3f}",
            f"{tp['efficiency']:.2f}", f"{peak:.1f} GiB" if peak is not None else "—"]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table_line(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def update_doc(path: Path, method: str, row: list[str]) -> None:
    """Replace the row with the same key (recipe, device, setting) in the `### <method>` table,
    or append it; create the section (and the file) where missing."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmarks"]
    header = [_table_line(DOC_COLUMNS), _table_line(["---"] * len(DOC_COLUMNS))]
    new = _table_line(row)
    heading = f"### {method}"
    if heading not in (line.strip() for line in lines):
        lines += ["", heading, "", *header, new]
    else:
        i = next(n for n, line in enumerate(lines) if line.strip() == heading) + 1
        while i < len(lines) and not lines[i].startswith("|") and not lines[i].startswith("#"):
            i += 1
        if i >= len(lines) or not lines[i].startswith("|"):  # a heading without a table yet
            j = i
            while not lines[i - 1].strip():  # the blank lines under the heading give way to the table
                i -= 1
            lines[i:j] = ["", *header, new] + ([""] if j < len(lines) else [])
        else:
            end = i + 2
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            key = [c.strip() for c in row[:KEY_COLUMNS]]
            match = [n for n in range(i + 2, end) if _cells(lines[n])[:KEY_COLUMNS] == key]
            if match:
                lines[match[0]] = new
            else:
                lines.insert(end, new)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


# --- the command ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/ssl_benchmark.py", description=__doc__.split("\n\n")[0],
        epilog="Arguments after a lone `--` go to the method's train.py as they are (they win over the recipe), "
               "e.g. `-- --lr 0.2 --local-crops-number 0`.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", required=True, choices=sorted(METHODS), help="the method to benchmark")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="smoke = seconds (tests); cpu = ~30 min on 2 cores; gpu = the papers' settings at 224 px "
                        "(default: gpu with a CUDA GPU, else cpu)")
    p.add_argument("--data", default="cifar10", help="a labelled dataset of the registry (or a class-folder path)")
    p.add_argument("--data-root", default=None,
                   help="dataset root (default: $SSL_DATA or ./data)")
    g = p.add_argument_group("overrides of the recipe (default: the recipe's value, see benchmarks/README.md)")
    g.add_argument("--epochs", type=int, default=None, help="training epochs (every schedule follows them)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps")
    g.add_argument("--arch", default=None, help="backbone (resnet18, resnet50, vit_tiny, vit_small, vit_base)")
    g.add_argument("--image-size", type=int, default=None, help="training image size = global crop size S")
    g.add_argument("--batch-size", type=int, default=None, help="per-step batch (also the backbone reference's)")
    g.add_argument("--device", default=None, choices=("auto", "cuda", "mps", "cpu"), help="device")
    g.add_argument("--amp", default=None, choices=("auto", "bf16", "fp16", "off"), help="mixed precision")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    g.add_argument("--seed", type=int, default=None, help="seed")
    g.add_argument("--bench-warmup", type=int, default=None, help="untimed backbone iterations")
    g.add_argument("--bench-iters", type=int, default=None, help="timed backbone iterations (median)")
    g.add_argument("--knn-max-train", type=int, default=None, help="cap the kNN bank (evenly spaced)")
    g.add_argument("--knn-max-test", type=int, default=None, help="cap the kNN queries (evenly spaced)")
    r = p.add_argument_group("records")
    r.add_argument("--out", default=None,
                   help="run directory (default runs/bench/<method>/<recipe>-<data>-<arch>-<size>px)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --out instead of starting afresh (throughput then covers the "
                        "resumed part only)")
    r.add_argument("--doc", default=None,
                   help=f"markdown file whose table gets the row (default {DEFAULT_DOC.relative_to(REPO)} except "
                        "for the smoke recipe)")
    r.add_argument("--no-doc", action="store_true", help="do not touch any markdown file")
    r.add_argument("--dry-run", action="store_true", help="print the training command and exit")
    return p


def resolve(opts, extra: list[str]) -> tuple[dict, dict, Path, list[str]]:
    """(train options, bench settings, run directory, train.py argv)."""
    recipe = RECIPES[opts.recipe][opts.method]
    train = dict(recipe["train"])
    for name in OVERRIDES:
        if getattr(opts, name) is not None:
            train[name] = getattr(opts, name)
    if train.get("workers") == "auto":
        train["workers"] = default_workers()
    bench = {k: (getattr(opts, k) if getattr(opts, k) is not None else v) for k, v in recipe["bench"].items()}
    tag = Path(opts.data).name if "/" in opts.data else opts.data
    run_dir = Path(opts.out or Path("runs") / "bench" / opts.method /
                   f"{opts.recipe}-{tag}-{train['arch']}-{train['image_size']}px")
    data = {"data": opts.data, "data_root": opts.data_root}
    argv = to_argv({**data, **train, "out": str(run_dir), "resume": "auto" if opts.resume else "never"}) + extra
    return train, bench, run_dir, argv


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    opts = build_parser().parse_args(own)
    if opts.recipe is None:
        opts.recipe = "gpu" if torch.cuda.is_available() else "cpu"
    if opts.recipe == "gpu" and opts.device is None and not torch.cuda.is_available():
        raise SystemExit("error: --recipe gpu needs a CUDA GPU and none is visible; use --recipe cpu (or force "
                         "--device cpu to run the GPU settings anyway)")
    train, bench, run_dir, train_argv = resolve(opts, extra)
    command = shlex.join(["python", f"{opts.method}/train.py", *train_argv])
    if opts.dry_run:
        print(command)
        return {"command": command}

    from common.datasets import DatasetError, build_dataset
    from common.logging import environment, read_metrics
    from common.runtime import amp_dtype, resolve_device

    try:  # fail before training, not after: the kNN needs labels on both splits
        for split in ("train", "test"):
            if not build_dataset(opts.data, opts.data_root, split).classes:
                raise SystemExit(f"error: the {split} split of {opts.data!r} has no labels; the benchmark's kNN "
                                 "needs a labelled dataset such as --data cifar10")
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None

    t_start = time.time()
    print(f"[bench] training: {command}", flush=True)
    probe = resolve_device(train.get("device", "auto"))
    if probe.type == "cuda":
        torch.cuda.reset_peak_memory_stats(probe)
    importlib.import_module(METHODS[opts.method]).main(train_argv)
    peak = torch.cuda.max_memory_allocated(probe) / 2**30 if probe.type == "cuda" else None
    t_trained = time.time()

    config = json.loads((run_dir / "config.json").read_text())
    args = Namespace(**config["args"])
    device = resolve_device(args.device)
    rows = read_metrics(run_dir / "metrics.jsonl")
    train_tp = train_throughput(rows, config["steps_per_epoch"])
    print("[bench] backbone forward+backward throughput", flush=True)
    backbone_tp = backbone_throughput(args, device, amp_dtype(args.amp, device), bench["bench_warmup"],
                                      bench["bench_iters"])
    views = method_views(opts.method, args)
    ratios = throughput_ratios(train_tp["img_per_s"], backbone_tp["img_per_s"], ideal_ratio(views, args.image_size))
    t_bench = time.time()
    print("[bench] kNN of the trained network, the network at initialisation and raw pixels", flush=True)
    knn = evaluate(run_dir, args, device, Namespace(**bench))
    stop = next((r for r in reversed(rows) if r.get("event") == "stop"), {})
    losses = [r["loss"] for r in rows if "loss" in r and "img_per_s" in r]

    result = {
        "benchmark": "ssl-lab/ssl_benchmark/1", "method": opts.method, "recipe": opts.recipe,
        "date": time.strftime("%Y-%m-%d"), "command": shlex.join(["python", "benchmarks/ssl_benchmark.py", *argv]),
        "train_command": command, "run_dir": str(run_dir), "recipe_settings": {"train": train, "bench": bench},
        "args": config["args"], "steps_per_epoch": config["steps_per_epoch"], "train_images": config["train_images"],
        "environment": environment(), "hardware": hardware(device),
        "wall_time_s": time.time() - t_start, "train_wall_time_s": stop.get("wall_time_s", t_trained - t_start),
        "phase_s": {"train": t_trained - t_start, "backbone": t_bench - t_trained, "knn": time.time() - t_bench},
        "steps": stop.get("step", train_tp["steps"]), "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "views": [{**v, "cost": view_cost(v["side"], args.image_size, v["grad"])} for v in views],
        "throughput": {"train": train_tp, "backbone": backbone_tp, **ratios,
                       "definition": "ratio = training source images/s / backbone fwd+bwd images/s at the global "
                                     "crop size; ideal = 1 / sum of view costs; efficiency = ratio / ideal"},
        "peak_memory_gib": peak, "knn": knn, "knn_by_epoch": knn_by_epoch(rows),
    }
    (run_dir / "benchmark.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    doc = None if opts.no_doc else Path(opts.doc) if opts.doc else (DEFAULT_DOC if opts.recipe != "smoke" else None)
    if doc is not None:
        update_doc(doc, opts.method, doc_row(result))
    best = max(knn["random_init"]["knn_top1"], knn["raw_pixels_best"]["knn_top1"])
    print(f"[bench] {opts.method} {opts.recipe}: kNN top-1 {knn['trained']['knn_top1']:.1f} "
          f"(random init {knn['random_init']['knn_top1']:.1f}, raw pixels {knn['raw_pixels_best']['knn_top1']:.1f}; "
          f"margin {knn['trained']['knn_top1'] - best:+.1f}); train {train_tp['img_per_s']:.1f} img/s, backbone "
          f"{backbone_tp['img_per_s']:.1f} img/s, ratio {ratios['ratio']:.3f}, ideal {ratios['ideal_ratio']:.3f}, "
          f"efficiency {ratios['efficiency']:.2f}; {result['wall_time_s'] / 60:.1f} min; "
          f"{run_dir / 'benchmark.json'}" + (f"; table in {doc}" if doc else ""), flush=True)
    return result


if __name__ == "__main__":
    main()
