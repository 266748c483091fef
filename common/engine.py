"""The one training loop. Methods drive it through a narrow interface (`SSLMethod`).

The engine owns what is common to every method: the data order, AMP, gradient clipping, per-step
learning-rate and weight-decay schedules, DDP, checkpoints (every epoch, every --save-every
steps and whenever the run stops), metrics.jsonl, validation, the periodic kNN monitor, the NaN
guard and the curves. A method owns its networks, its loss and its own state.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Subset

from common import optim
from common.checkpoint import (
    RESUME_KEYS,
    CheckpointError,
    eval_state,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from common.logging import RunLogger, read_metrics, write_config
from common.options import option_differences, output_problem, parse_cli
from common.runtime import cleanup_runtime, preserved_rng, rng_state, set_rng_state, setup_runtime
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


def make_views(transform, batch, seed: int, epoch: int, index: int, rank: int, device, channels_last: bool):
    """(uint8 images, labels) from the loader -> (views, labels) on `device`: the method's views of
    the whole batch, made there from the generator of (seed, epoch, batch index, rank)."""
    from common.loader import view_generator

    images, labels = _to_device(batch, device, False)
    views = transform(images, view_generator(seed, epoch, index, rank))
    return _to_device(views, device, channels_last), labels


def training_step(model, method, batch, step: int, optimizer, scaler, params, clip_grad: float, autocast) -> dict:
    """One optimiser step on a batch of views: forward under AMP, backward, per-parameter clipping,
    the method's hooks around the optimiser step. `model` is the (DDP-wrapped) method."""
    with autocast():
        out = model(batch, step)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        clip_gradients_per_parameter(params, clip_grad)
    method.before_optimizer_step(step)
    scaler.step(optimizer)
    scaler.update()
    method.after_step(step)
    return out


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
    def prepare(self, method: SSLMethod, resume_path: Path | None = None, ckpt: dict | None = None) -> None:
        """Build the optimiser and load the resume checkpoint (`read_resume`) into the method,
        optimiser and scaler: what can refuse the command happens before the run directory is touched."""
        args, rt = self.args, self.rt
        self.channels_last = args.arch.startswith("resnet") and rt.device.type != "mps"
        method.to(rt.device)
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        self.optimizer = optim.build_optimizer(method.param_groups(), args)
        self.scaler = rt.grad_scaler()
        self.step, self.wall_before, self.resumed_step = 0, 0.0, None
        self.resume_path = resume_path
        if resume_path is not None:
            self.load_state(method, ckpt)
            self.step = self.resumed_step = ckpt["step"]
            self.wall_before = ckpt.get("wall_time", 0.0)
            rngs = ckpt["rng"]
            set_rng_state(rngs[rt.rank] if rt.rank < len(rngs) else rngs[0])
        elif rt.distributed:
            torch.manual_seed(args.seed + rt.rank)  # own drop-path masks per process after identical init

    def load_state(self, method: SSLMethod, ckpt: dict) -> None:
        try:
            method.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
            detail = lines[1] if len(lines) > 1 else lines[0]  # the first mismatch, after torch's header
            raise SystemExit(f"error: {self.resume_path} does not fit this model ({detail[:200]}); "
                             f"{option_differences(ckpt.get('args') or {}, vars(self.args))}") from None

    def fit(self, method: SSLMethod, transform) -> dict:
        """Train from the state `prepare` set up (a fresh run or the resume checkpoint's)."""
        from common.figures import plot_metrics
        from common.loader import build_loader

        args, rt = self.args, self.rt
        channels_last, optimizer, scaler = self.channels_last, self.optimizer, self.scaler
        step = self.step
        lr_schedule = cosine_schedule(args.lr * args.batch_size / 256, args.min_lr, args.epochs,
                                      self.steps_per_epoch, args.warmup_epochs)
        wd_schedule = cosine_schedule(args.weight_decay, args.weight_decay_end, args.epochs, self.steps_per_epoch)

        stop_at = self.total_steps if args.max_steps is None else min(self.total_steps, args.max_steps)
        logger = RunLogger(self.run_dir, rt.is_main, self.total_steps, step, stop_at, tensorboard=args.tensorboard)
        logger.truncate_after(step)
        logger.banner(f"{self.name} on {args.data}", self.banner_fields(method, step, stop_at))
        for note in self.notes:
            logger.info(note)

        model = method
        if rt.distributed:
            # on by default (the official DINO ResNet, BYOL and Barlow Twins codes); GPUs only, as
            # SyncBatchNorm has no CPU kernel: on gloo each process keeps its own batch statistics
            if args.sync_bn and rt.device.type == "cuda" and any(
                    isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                logger.info("SyncBatchNorm: BatchNorm statistics over the global batch (--no-sync-bn: per process)")
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
        if args.compile:
            model = torch.compile(model)

        self.transform = transform
        loader = build_loader(self.train_set, transform.load, args.batch_size, args.seed, args.workers, rt)
        val_loader = (build_loader(self.val_set, transform.load, args.batch_size, args.seed, args.workers, rt,
                                   shuffle=False) if self.val_set is not None else None)
        self.t_start = time.time()
        if step == 0:
            self.save_snapshot(method, 0, 0)
            self.monitor_initial_network(method, logger)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        bad = torch.zeros((), dtype=torch.bool, device=rt.device)
        last_saved, reason, epoch_done = -1, "end", step  # a resumed step is always past its epoch's end
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
                    batch = make_views(transform, batch, args.seed, epoch, step % self.steps_per_epoch, rt.rank,
                                       rt.device, channels_last)
                    out = training_step(model, method, batch, step, optimizer, scaler, params, args.clip_grad,
                                        rt.autocast)
                    bad |= ~torch.isfinite(out["loss"].detach())
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
                    # An epoch's last step and a stop are saved once, below, after the epoch's end: a
                    # checkpoint taken before the end of an epoch would resume past its validation,
                    # monitor, snapshot and epoch row.
                    if args.save_every and step % args.save_every == 0 and not at_end and reason == "end":
                        self._check_finite(bad, step, method, last_saved)
                        self.save(method, optimizer, scaler, step)
                        last_saved = step
                    if at_end or reason != "end":
                        break
                if step % self.steps_per_epoch == 0:  # also when a signal stops the run on an epoch's last step
                    self._check_finite(bad, step, method, last_saved)
                    with preserved_rng():  # evaluation must not move the training run's random stream
                        self.end_of_epoch(method, model, val_loader, step, logger)
                    epoch_done = step
                    self.save(method, optimizer, scaler, step)
                    last_saved = step
                    if rt.is_main:
                        plot_metrics(self.run_dir)
        except KeyboardInterrupt:
            reason = "signal"
        finally:
            self._restore_signals()
        # A second Ctrl-C between an epoch's last step and its end leaves no checkpoint of that step:
        # the previous one is kept and resuming redoes the steps and the epoch end.
        consistent = step % self.steps_per_epoch or epoch_done == step
        if last_saved != step and consistent:  # stopped mid-epoch: no epoch end saved this step
            self._check_finite(bad, step, method, last_saved)
            self.save(method, optimizer, scaler, step)
            last_saved = step
            if rt.is_main:
                plot_metrics(self.run_dir)
        summary = {"event": "stop", "reason": reason, "step": step, "epoch": step / self.steps_per_epoch,
                   "wall_time_s": round(self.wall_time(), 2)}
        logger.log(summary, show=False)
        logger.close()
        if reason == "signal":
            signum = self.stop_signal or signal.SIGINT
            kept = last_saved if last_saved >= 0 else self.resumed_step
            saved = (f"checkpoint saved in {self.run_dir}/checkpoint.pt" if last_saved == step else
                     f"the checkpoint of step {kept} is kept" if kept is not None else "no checkpoint was saved yet")
            if rt.is_main:
                print(f"stopped by {signal.Signals(signum).name} at step {step}; {saved} — re-run the same command "
                      "to resume", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)  # the shell's convention: 130 after SIGINT, 143 after SIGTERM
        logger.info(f"done: step {step}/{self.total_steps}, {summary['wall_time_s']} s{self.knn_summary()}, "
                    f"run directory {self.run_dir}")
        return summary

    def _check_finite(self, bad, step, method, last_saved):
        if bool(bad.item()):
            good = last_saved if last_saved >= 0 else self.resumed_step
            kept = f"the last good checkpoint (step {good}) is kept" if good is not None else "nothing was saved"
            hint = f"; {method.nan_hint}" if method.nan_hint else ""
            raise SystemExit(f"error: the loss became NaN or infinite by step {step}; {kept}{hint}")

    @torch.no_grad()
    def monitor_initial_network(self, method, logger) -> None:
        """kNN of the network before its first step: the baseline every later kNN is read against."""
        if not (self.rt.is_main and self.monitor is not None and self.args.eval_every):
            return
        if any("knn_init_top1" in r for r in read_metrics(self.run_dir / "metrics.jsonl")):
            return  # a run killed before its first checkpoint restarts at step 0: measured already
        with preserved_rng():
            init = self.monitor(method.eval_backbone)
        logger.log({"step": 0, "epoch": 0, "knn_init_top1": init["knn_top1"], "knn_queries": init["knn_queries"]},
                   show=False)
        logger.info(f"kNN at initialisation: {init['knn_top1']:.1f} % on {init['knn_queries']} queries "
                    "(the baseline this run must beat)")

    def knn_summary(self) -> str:
        """', kNN 42.9 % (28.1 % at initialisation)' from metrics.jsonl: also right after a resume."""
        rows = read_metrics(self.run_dir / "metrics.jsonl") if self.rt.is_main else []
        last = [r["knn_top1"] for r in rows if "knn_top1" in r]
        init = [r["knn_init_top1"] for r in rows if "knn_init_top1" in r]
        if not last:
            return ""
        return f", kNN {last[-1]:.1f} %" + (f" ({init[0]:.1f} % at initialisation)" if init else "")

    def end_of_epoch(self, method, model, val_loader, step, logger):
        from common.runtime import barrier

        epoch = step // self.steps_per_epoch
        row = {"step": step, "epoch": epoch}
        if val_loader is not None:
            model.eval()
            sums, count = {}, 0
            for index, batch in enumerate(val_loader):
                batch = make_views(self.transform, batch, self.args.seed, -1, index, self.rt.rank, self.rt.device,
                                   False)
                with torch.no_grad(), self.rt.autocast():  # a loss to report, not to learn from
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
        logger.end_epoch(row, self.args.epochs)

    def banner_fields(self, method, step: int, stop_at: int) -> dict:
        """What the start banner shows: where the run writes, what it trains and for how long."""
        args, rt = self.args, self.rt
        count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
        amp = str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else "off"
        stops = f"; this run stops at {stop_at} (--max-steps)" if stop_at < self.total_steps else ""
        fields = {
            "run directory": str(self.run_dir),
            "device": f"{rt.device}, AMP {amp}" + (f", {rt.world_size} processes" if rt.world_size > 1 else ""),
            "backbone": f"{args.arch}, {count(method.eval_backbone):.2f} M parameters "
                        f"({count(method):.2f} M in the whole method)",
            "images": f"{len(self.train_set)} training, batch {args.batch_size}: "
                      f"{self.steps_per_epoch} steps per epoch",
            "steps": f"{self.total_steps} in {args.epochs} epoch{'s' * (args.epochs != 1)}{stops}",
        }
        if self.resume_path is not None:
            fields["resume"] = f"step {step} (epoch {step // self.steps_per_epoch}) from {self.resume_path}"
        return fields


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
    """Parse the shared options plus the method's, then `train` (for callers that have imported torch
    already; a train.py parses first with `parse_cli`, so that --help never waits for torch)."""
    return train(name, parse_cli(name, add_arguments, defaults, argv, description), build)


def train(name: str, args, build):
    """Set up the runtime, data and monitor for parsed `args`, build the method with
    `build(args, steps_per_epoch) -> (method, train_transform)`, and train."""
    from common.datasets import DatasetError

    args.out = args.out or default_out(name, args)
    problem = output_problem(args.out)
    if problem:
        raise SystemExit(f"error: {problem}")
    runtime = setup_runtime(args)
    # Nothing in the run directory changes before the command is known to be valid: under the lock,
    # the resume checkpoint is read and checked (cheap checks before the data and the model are
    # built, its fit to the model after), and only then are config.json and the rest written.
    try:
        with run_directory_lock(Path(args.out), runtime.is_main):
            resume = read_resume(name, args)
            notes: list[str] = []
            base, train_set, val_set = build_datasets(args, notes)
            monitor = build_monitor(args, base, runtime, notes)
            trainer = Trainer(name, args, runtime, train_set, val_set, monitor)
            trainer.notes += notes
            method, transform = build(args, trainer.steps_per_epoch)
            if getattr(args, "init", None) and resume[0] is None:  # a resumed run has its own weights
                from common.pretrained import init_backbones

                trainer.notes.append(init_backbones(method, args.init))
            check_batch_norm(method, args.batch_size // runtime.world_size)
            trainer.prepare(method, *resume)
            del resume  # the loaded copy of the checkpoint is not needed during training
            if runtime.is_main:
                write_config(trainer.run_dir, args, {
                    "method": name, "steps_per_epoch": trainer.steps_per_epoch, "world_size": runtime.world_size,
                    "embed_dim": method.eval_backbone.embed_dim,  # the figures' 1/√d reference
                    "train_images": len(train_set), "device": str(runtime.device),
                    "amp": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "off"})
            return trainer.fit(method, transform)
    except (DatasetError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save
        raise SystemExit(128 + signal.SIGINT) from None
    finally:
        cleanup_runtime()


def read_resume(name: str, args) -> tuple[Path | None, dict | None]:
    """(path, checkpoint) that --resume asks for, read safely and checked (method, arch, resume
    state), or (None, None) for a fresh start."""
    if args.resume == "never":
        return None, None
    path = Path(args.out) / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
    if args.resume == "auto" and not path.exists():
        return None, None
    if not path.exists():
        raise SystemExit(f"error: --resume {args.resume} does not exist; pass a checkpoint.pt, 'auto' or 'never'")
    return path, load_checkpoint(path, method=name, arch=args.arch, trust=args.trust_checkpoint, require=RESUME_KEYS)


def check_batch_norm(method: nn.Module, per_process_batch: int) -> None:
    """BatchNorm1d in training mode needs two samples per process: one has no batch variance."""
    if per_process_batch < 2 and any(isinstance(m, nn.BatchNorm1d) for m in method.modules()):
        raise SystemExit(f"error: --batch-size {per_process_batch} per process is too small for the BatchNorm "
                         "layers of this method's head; use --batch-size 2 or more per process")


@contextlib.contextmanager
def run_directory_lock(run_dir: Path, enabled: bool = True):
    """Hold an exclusive flock on <run_dir>/.lock while the run lives, so a second run on the same
    --out is refused; the kernel drops the lock when its process dies, so a killed run never blocks
    the next. Under the lock no save is in flight, so a killed save's temporary files can go."""
    if not enabled:
        yield
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"error: another run is using {run_dir} (it holds {lock}); wait for it to finish "
                             "or choose another --out") from None
        remove_stale_temporaries(run_dir)
        yield
    except BaseException:
        if created and [p.name for p in run_dir.iterdir()] == [lock.name]:  # refused: leave no trace
            lock.unlink()
            run_dir.rmdir()
        raise
    finally:
        os.close(fd)

