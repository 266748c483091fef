"""Training throughput of a method against its backbone alone, in one process.

    python benchmarks/throughput.py --method byol --arch resnet18 --image-size 32 --batch-size 64 --steps 40
    python benchmarks/throughput.py --method dino --arch vit_small --patch-size 16 --image-size 224 \\
        --batch-size 64 --steps 20 --device cuda -- --local-crops-number 6 --amp bf16

The method's own `train.py` parses the options (its paper defaults, plus anything after `--`) and
builds the method and its views, exactly as a training run; then N steps of the engine's
`make_views` + `training_step` run on the data set's images (warm-up steps excluded), timed per
part: loading (the DataLoader's decode and resize), views (made on the device) and the optimiser
step. In the same process the backbone alone runs forward+backward on random tensors at the same
batch, size, device, AMP and memory format.

train_img_s = source images per second over the whole step (loading + views + optimiser step);
ideal_ratio = 1 / Σ_views cost (benchmarks/ssl_benchmark.py: a view of side s costs (s/S)² with
gradients, a third of that without); efficiency = (train_img_s / backbone_fwd_bwd_img_s) /
ideal_ratio; data_share = the fraction of the step spent making views. The last stdout line is
one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's code first

METHODS = ("dino", "byol", "barlow_twins", "dino_twins", "jigsaw", "colorization")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", required=True, choices=METHODS, help="the method whose train.py is timed")
    p.add_argument("--arch", default="resnet18", help="backbone (see --help of any train.py)")
    p.add_argument("--image-size", type=int, default=32, help="training image size in pixels")
    p.add_argument("--patch-size", type=int, default=4, help="ViT patch size")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--steps", type=int, default=40, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps", "auto"), help="training device")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw", "lars"),
                   help="optimiser (SGD: the comparison settings of docs/benchmarks.md)")
    p.add_argument("--data", default="shapes", help="dataset registry name or path (images are loaded as in training)")
    p.add_argument("--data-root", default=None, help="dataset root (default: $SSL_DATA or ./data)")
    p.add_argument("extra", nargs="*", help="after --: more options for the method's train.py")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise SystemExit("error: --warmup must be >= 0")
    return args


def method_setup(opts):
    """(name, parsed train.py args, build) from the method's own entry: its `main` parses and
    validates the options, and hands them to the engine's `train`, caught here."""
    from common import engine

    module = importlib.import_module(f"{opts.method}.train")
    argv = ["--arch", opts.arch, "--image-size", str(opts.image_size), "--patch-size", str(opts.patch_size),
            "--batch-size", str(opts.batch_size), "--device", opts.device, "--optimizer", opts.optimizer,
            "--data", opts.data, "--epochs", "1", "--warmup-epochs", "0", "--eval-every", "0",
            "--max-images", str(opts.batch_size * (opts.steps + opts.warmup)), "--out", "/nonexistent-unused",
            *(["--data-root", opts.data_root] if opts.data_root else []), *opts.extra]
    if opts.method in ("dino", "dino_twins"):
        argv = ["--warmup-teacher-temp-epochs", "0", *argv]
    captured = {}
    original = engine.train
    engine.train = lambda name, args, build: captured.update(name=name, args=args, build=build)
    try:
        module.main(argv)
    finally:
        engine.train = original
    return captured["name"], captured["args"], captured["build"]


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def method_view_costs(name: str, args, views) -> list[dict]:
    """The views one source image costs in the method's step (ssl_benchmark.method_views, plus
    Jigsaw's tiles, at the side its views cut them, and Colorization's single crop)."""
    from benchmarks.ssl_benchmark import method_views

    if name == "jigsaw":
        return [dict(view="tiles", side=views.geometry["tile"], grad=True, count=args.grid ** 2)]
    if name == "colorization":
        return [dict(view="image", side=args.image_size, grad=True, count=1)]
    return method_views(name, args)


def run(opts) -> dict:
    import torch

    from benchmarks.ssl_benchmark import backbone_throughput, ideal_ratio
    from common.engine import Trainer, build_datasets, make_views, training_step
    from common.loader import build_loader
    from common.runtime import setup_runtime

    name, args, build = method_setup(opts)
    runtime = setup_runtime(args)
    device = runtime.device
    _, train_set, _ = build_datasets(args, [])
    trainer = Trainer(name, args, runtime, train_set)
    method, views = build(args, trainer.steps_per_epoch)
    trainer.prepare(method)
    optimizer, scaler = trainer.optimizer, trainer.scaler
    params = [p for g in optimizer.param_groups for p in g["params"]]
    loader = build_loader(train_set, views.load, args.batch_size, args.seed, args.workers, runtime)
    loader.sampler.set_epoch(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {"load": [], "views": [], "step": []}
    method.train()
    batches = iter(loader)
    for step in range(opts.warmup + opts.steps):
        sync(device)
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        batch = make_views(views, batch, args.seed, 0, step, 0, device, trainer.channels_last)
        sync(device)
        t2 = time.perf_counter()
        out = training_step(method, method, batch, step, optimizer, scaler, params, args.clip_grad,
                            runtime.autocast)
        float(out["loss"].detach())  # waits for the step, as the engine's logging does
        sync(device)
        t3 = time.perf_counter()
        if step >= opts.warmup:
            times["load"].append(t1 - t0)
            times["views"].append(t2 - t1)
            times["step"].append(t3 - t2)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    total = sum(sum(v) for v in times.values())
    train_img_s = args.batch_size * opts.steps / total
    backbone = backbone_throughput(args, device, runtime.amp_dtype, warmup=3, iters=max(5, opts.steps // 2))
    ideal = ideal_ratio(method_view_costs(name, args, views), args.image_size)
    ratio = train_img_s / backbone["img_per_s"]
    return {
        "method": name, "arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
        "steps": opts.steps, "device": str(device), "optimizer": args.optimizer,
        "amp": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "off",
        "threads": torch.get_num_threads(),
        "train_img_s": round(train_img_s, 2), "backbone_fwd_bwd_img_s": round(backbone["img_per_s"], 2),
        "ideal_ratio": round(ideal, 4), "efficiency": round(ratio / ideal, 3),
        "data_share": round(sum(times["views"]) / total, 4), "load_share": round(sum(times["load"]) / total, 4),
        "median_step_s": round(statistics.median(a + b + c for a, b, c in zip(*times.values())), 5),
        "peak_memory_mb": None if peak is None else round(peak, 1),
    }


def main(argv=None) -> dict:
    opts = parse(argv)
    result = run(opts)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
