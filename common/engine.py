"""The one training loop. Methods drive it through a narrow interface (`SSLMethod`).

The engine owns what is common to every method: the data order, AMP, gradient clipping, per-step
learning-rate and weight-decay schedules, DDP, checkpoints (every epoch, every --save-every
steps and whenever the run stops), metrics.jsonl, validation, the periodic kNN monitor, the NaN
guard and the curves. A method owns its networks, its loss and its own state.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Subset

from common import optim
from common.checkpoint import CheckpointError, eval_state, load_checkpoint, save_checkpoint
from common.logging import RunLogger, write_config
from common.options import base_parser, parse_args
from common.runtime import cleanup_runtime, rng_state, set_rng_state, setup_runtime
from common.schedules import cosine_schedule


class SSLMethod(nn.Module):
    """What a method gives the engine (see docs/ARCHITECTURE.md)."""

    name = "method"
    nan_hint = ""  # method-specific advice appended to the NaN message

    def forward(self, batch, step: int) -> dict:
        """batch = (views, labels) on the device; returns {"loss": tensor, **scalars to log}.
        Update loss state only when self.training: validation calls this in eval mode."""
        raise NotImplementedError

    def before_optimizer_step(self, step: int) -> None:
        """After backward and clipping, before the optimiser step."""

    def after_step(self, step: int) -> None:
        """After the optimiser step (e.g. the EMA of a teacher)."""

    def param_groups(self) -> list[dict]:
        return optim.param_groups(self)

    @property
    def eval_backbone(self) -> nn.Module:
        raise NotImplementedError

    def on_epoch_end(self, epoch: int, run_dir: Path) -> dict:
        """Main process only, after epoch `epoch` (1-based): method figures and extra logs."""
        return {}


class NonFiniteLoss(RuntimeError):
    pass


def _to_device(obj, device, channels_last: bool):
    if torch.is_tensor(obj):
        obj = obj.to(device, non_blocking=True)
        if channels_last and obj.ndim == 4 and obj.is_floating_point():
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device, channels_last) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device, channels_last) for k, v in obj.items()}
    return obj


def clip_gradients_per_parameter(params, clip: float) -> None:
    """DINO's clipping: each parameter's gradient norm separately capped at `clip`
    (no host synchronisation: the factor stays on the device)."""
    for p in params:
        if p.grad is not None:
            factor = (clip / (p.grad.detach().norm(2) + 1e-6)).clamp(max=1.0)
            p.grad.mul_(factor)


def snapshot_epochs(epochs: int) -> set[int]:
    """The epochs whose backbone the t-SNE-over-epochs figure needs: init, 1, middle, last."""
    return {0, 1, max(1, epochs // 2), epochs}


class Trainer:
    def __init__(self, name: str, args, runtime, train_set, val_set=None, monitor=None, logger_note=None):
        self.name, self.args, self.rt = name, args, runtime
        self.train_set, self.val_set, self.monitor = train_set, val_set, monitor
        self.run_dir = Path(args.out)
        self.steps_per_epoch = len(train_set) // args.batch_size
        if self.steps_per_epoch == 0:
            raise SystemExit(f"error: --batch-size {args.batch_size} is larger than the {len(train_set)} training "
                             "images; lower --batch-size or use more images")
        self.total_steps = args.epochs * self.steps_per_epoch
        self.notes = [logger_note] if logger_note else []
        self.stop_signal = None

    # --- checkpoints --------------------------------------------------------------------------
    def _gather_rng(self):
        state = rng_state()
        if not self.rt.distributed:
            return [state]
        states = [None] * self.rt.world_size
        dist.all_gather_object(states, state)
        return states

    def save(self, method, optimizer, scaler, step: int, path: Path | None = None) -> None:
        rngs = self._gather_rng()  # collective: every process calls save
        if not self.rt.is_main:
            return
        backbone = method.eval_backbone
        save_checkpoint({
            "method": self.name, "arch": self.args.arch, "backbone_kwargs": dict(backbone.kwargs),
            "backbone": backbone.state_dict(), "epoch": step // self.steps_per_epoch, "step": step,
            "args": vars(self.args), "model": method.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "rng": rngs, "wall_time": self.wall_time(),
        }, path or self.run_dir / "checkpoint.pt")

    def save_snapshot(self, method, epoch: int, step: int) -> None:
        if not self.rt.is_main:
            return
        backbone = method.eval_backbone
        save_checkpoint(eval_state({
            "method": self.name, "arch": self.args.arch, "backbone_kwargs": dict(backbone.kwargs),
            "backbone": backbone.state_dict(), "epoch": epoch, "step": step, "args": vars(self.args)}),
            self.run_dir / "snapshots" / f"epoch{epoch:04d}.pt")

    def wall_time(self) -> float:
        return self.wall_before + time.time() - self.t_start

    def resume_checkpoint(self) -> Path | None:
        resume = self.args.resume
        if resume == "never":
            return None
        if resume == "auto":
            path = self.run_dir / "checkpoint.pt"
            return path if path.exists() else None
        if not Path(resume).exists():
            raise SystemExit(f"error: --resume {resume} does not exist; pass a checkpoint.pt, 'auto' or 'never'")
        return Path(resume)

    # --- signals --------------------------------------------------------------------------------
    def _install_signals(self):
        def request_stop(signum, frame):
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            self.stop_signal = signum

        self._old = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    def _restore_signals(self):
        for s, h in self._old.items():
            signal.signal(s, h)

    def _stop_requested(self) -> bool:
        flag = self.stop_signal is not None
        if self.rt.distributed:
            t = torch.tensor([float(flag)], device=self.rt.device)
            dist.all_reduce(t)
            flag = t.item() > 0
        return flag

    # --- the loop -------------------------------------------------------------------------------
    def fit(self, method: SSLMethod, transform) -> dict:
        from common.figures import plot_metrics
        from common.loader import build_loader

        args, rt = self.args, self.rt
        channels_last = args.arch.startswith("resnet") and rt.device.type != "mps"
        method.to(rt.device)
        if channels_last:
            method.to(memory_format=torch.channels_last)
        optimizer = optim.build_optimizer(method.param_groups(), args)
        scaler = rt.grad_scaler()
        lr_schedule = cosine_schedule(args.lr * args.batch_size / 256, args.min_lr, args.epochs,
                                      self.steps_per_epoch, args.warmup_epochs)
        wd_schedule = cosine_schedule(args.weight_decay, args.weight_decay_end, args.epochs, self.steps_per_epoch)

        step, self.wall_before = 0, 0.0
        resume_path = self.resume_checkpoint()
        if resume_path is not None:
            ckpt = load_checkpoint(resume_path, method=self.name, arch=args.arch)
            method.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            step, self.wall_before = ckpt["step"], ckpt.get("wall_time", 0.0)
            rngs = ckpt["rng"]
            set_rng_state(rngs[rt.rank] if rt.rank < len(rngs) else rngs[0])
        elif rt.distributed:
            torch.manual_seed(args.seed + rt.rank)  # own drop-path masks per process after identical init

        logger = RunLogger(self.run_dir, rt.is_main, self.total_steps, step)
        logger.truncate_after(step)
        if resume_path is not None:
            logger.info(f"resuming from {resume_path} at step {step} (epoch {step // self.steps_per_epoch})")
        for note in self.notes:
            logger.info(note)

        model = method
        if rt.distributed:
            if args.sync_bn:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
        if args.compile:
            model = torch.compile(model)

        loader = build_loader(self.train_set, transform, args.batch_size, args.seed, args.workers, rt)
        val_loader = (build_loader(self.val_set, transform, args.batch_size, args.seed, args.workers, rt,
                                   shuffle=False) if self.val_set is not None else None)
        stop_at = self.total_steps if args.max_steps is None else min(self.total_steps, args.max_steps)
        self.t_start = time.time()
        if step == 0:
            self.save_snapshot(method, 0, 0)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        bad = torch.zeros((), dtype=torch.bool, device=rt.device)
        last_saved, reason = -1, "end"
        self._install_signals()
        try:
            while step < stop_at and reason == "end":
                epoch = step // self.steps_per_epoch
                loader.sampler.set_epoch(epoch, step % self.steps_per_epoch)
                model.train()
                t_log, step_log = time.time(), step
                for batch in loader:
                    for g in optimizer.param_groups:
                        g["lr"] = lr_schedule[step] * g["lr_scale"]
                        if g["apply_wd"]:
                            g["weight_decay"] = wd_schedule[step]
                    batch = _to_device(batch, rt.device, channels_last)
                    with rt.autocast():
                        out = model(batch, step)
                    loss = out["loss"]
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if args.clip_grad > 0:
                        scaler.unscale_(optimizer)
                        clip_gradients_per_parameter(params, args.clip_grad)
                    method.before_optimizer_step(step)
                    scaler.step(optimizer)
                    scaler.update()
                    method.after_step(step)
                    bad |= ~torch.isfinite(loss.detach())
                    step += 1

                    at_end = step >= stop_at or step % self.steps_per_epoch == 0
                    if step % args.log_every == 0 or at_end:
                        self._check_finite(bad, step, method, last_saved)
                        now = time.time()
                        row = {"step": step, "epoch": round(step / self.steps_per_epoch, 4),
                               "lr": optimizer.param_groups[0]["lr"], "wd": wd_schedule[step - 1],
                               "img_per_s": args.batch_size * (step - step_log) / max(now - t_log, 1e-9)}
                        row.update({k: (v.detach().float().item() if torch.is_tensor(v) else v)
                                    for k, v in out.items()})
                        logger.log(row)
                        t_log, step_log = now, step
                        if self._stop_requested():
                            reason = "signal"
                    if args.save_every and step % args.save_every == 0:
                        self._check_finite(bad, step, method, last_saved)
                        self.save(method, optimizer, scaler, step)
                        last_saved = step
                    if at_end or reason != "end":
                        break
                if reason == "end" and step % self.steps_per_epoch == 0:
                    self._check_finite(bad, step, method, last_saved)
                    self.end_of_epoch(method, model, val_loader, step, logger)
                    self.save(method, optimizer, scaler, step)
                    last_saved = step
                    if rt.is_main:
                        plot_metrics(self.run_dir)
        except KeyboardInterrupt:
            reason = "signal"
        finally:
            self._restore_signals()
        if last_saved != step:  # stopped mid-epoch: the epoch end neither saved nor drew this step
            self._check_finite(bad, step, method, last_saved)
            self.save(method, optimizer, scaler, step)
            if rt.is_main:
                plot_metrics(self.run_dir)
        summary = {"event": "stop", "reason": reason, "step": step, "epoch": step / self.steps_per_epoch,
                   "wall_time_s": round(self.wall_time(), 2)}
        logger.log(summary, show=False)
        logger.close()
        if reason == "signal":
            raise SystemExit(f"stopped at step {step}; checkpoint saved in {self.run_dir}/checkpoint.pt — "
                             "re-run the same command to resume")
        logger.info(f"done: step {step}/{self.total_steps}, {summary['wall_time_s']} s, run directory {self.run_dir}")
        return summary

    def _check_finite(self, bad, step, method, last_saved):
        if bool(bad.item()):
            kept = f"the last good checkpoint (step {last_saved}) is kept" if last_saved >= 0 else "nothing was saved"
            hint = f"; {method.nan_hint}" if method.nan_hint else ""
            raise SystemExit(f"error: the loss became NaN or infinite by step {step}; {kept}{hint}")

    @torch.no_grad()
    def end_of_epoch(self, method, model, val_loader, step, logger):
        from common.runtime import barrier

        epoch = step // self.steps_per_epoch
        row = {"step": step, "epoch": epoch}
        if val_loader is not None:
            model.eval()
            sums, count = {}, 0
            for batch in val_loader:
                batch = _to_device(batch, self.rt.device, False)
                with self.rt.autocast():
                    out = model(batch, step - 1)
                n = len(batch[1])
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * n
                count += n
            model.train()
            totals = torch.tensor([count, *sums.values()], dtype=torch.float64)
            if self.rt.distributed:
                dist.all_reduce(totals)
            row.update({f"val_{k}": (totals[i + 1] / totals[0]).item() for i, k in enumerate(sums)})
        if self.rt.is_main:
            if self.monitor is not None and self.args.eval_every and (
                    epoch % self.args.eval_every == 0 or epoch == self.args.epochs):
                row.update(self.monitor(method.eval_backbone))
            row.update(method.on_epoch_end(epoch, self.run_dir) or {})
            if epoch in snapshot_epochs(self.args.epochs):
                self.save_snapshot(method, epoch, step)
        barrier()
        if len(row) > 2:
            logger.log(row)


# --- the shared train.py entry ------------------------------------------------------------------

def _labelled(dataset) -> bool:
    return bool(getattr(dataset, "classes", None))


def build_datasets(args, logger_notes: list):
    from common.datasets import DatasetError, build_dataset

    train_set = build_dataset(args.data, args.data_root, args.train_split, args.download)
    base = train_set
    val_set = None
    try:
        val_set = build_dataset(args.data, args.data_root, "test", args.download)
    except DatasetError:
        if args.val_fraction > 0:
            n_val = max(1, int(len(train_set) * args.val_fraction))
            val_set = Subset(base, range(len(base) - n_val, len(base)))
            train_set = Subset(base, range(len(base) - n_val))
    if args.max_images is not None:
        train_set = Subset(train_set, range(min(args.max_images, len(train_set))))
        if val_set is not None:
            val_set = Subset(val_set, range(min(max(args.max_images // 5, args.batch_size), len(val_set))))
    if val_set is None:
        logger_notes.append("no held-out split: validation loss is skipped (see --val-fraction)")
    return base, train_set, val_set


def build_monitor(args, base_train_set, runtime, notes: list):
    """The kNN monitor on --eval-data (default: the training data when it has labels)."""
    from common.datasets import build_dataset
    from eval.knn import KNNMonitor

    name = args.eval_data
    if name is None:
        if not _labelled(base_train_set):
            notes.append(f"{args.data} has no labels: kNN monitoring is skipped (set --eval-data)")
            return None
        name = args.data
    if name == "none" or not args.eval_every:
        return None
    labelled_bank = name == args.data and args.train_split == "train"
    bank = base_train_set if labelled_bank else build_dataset(name, args.data_root, "train", args.download)
    query = build_dataset(name, args.data_root, "test", args.download)
    cap = args.max_images
    return KNNMonitor(bank, query, args.image_size, batch_size=min(256, max(args.batch_size, 32)),
                      workers=args.workers, device=runtime.device,
                      max_bank=cap, max_query=None if cap is None else max(cap // 5, 10))


def default_out(name: str, args) -> str:
    tag = Path(args.data).name if ("/" in args.data or Path(args.data).exists()) else args.data
    return str(Path("runs") / name / f"{tag}-{args.arch}")


def main(name: str, add_arguments, build, defaults: dict | None = None, argv=None, description: str = ""):
    """Parse the shared options plus the method's, set up the runtime, data and monitor, build
    the method with `build(args, steps_per_epoch) -> (method, train_transform)`, and train."""
    from common.datasets import DatasetError

    parser = base_parser(name, description, **(defaults or {}))
    add_arguments(parser)
    args = parse_args(parser, argv)
    args.out = args.out or default_out(name, args)
    runtime = setup_runtime(args)
    try:
        notes: list[str] = []
        base, train_set, val_set = build_datasets(args, notes)
        monitor = build_monitor(args, base, runtime, notes)
        trainer = Trainer(name, args, runtime, train_set, val_set, monitor)
        trainer.notes += notes
        method, transform = build(args, trainer.steps_per_epoch)
        if runtime.is_main:
            write_config(trainer.run_dir, args, {
                "method": name, "steps_per_epoch": trainer.steps_per_epoch, "world_size": runtime.world_size,
                "train_images": len(train_set), "device": str(runtime.device),
                "amp": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "off"})
        return trainer.fit(method, transform)
    except (DatasetError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        cleanup_runtime()

