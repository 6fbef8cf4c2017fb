"""The Ray Train loop for the platform's classifiers.

Runs on every worker of a `TorchTrainer`: training data comes from Ray Data shards (input columns
named in `config["inputs"]`, label column `y`), the model is wrapped for DDP (gloo on CPU, NCCL on
GPU), and every epoch reports validation metrics over the whole validation split, scored in parts
by the workers and gathered (`evaluate_split`), plus a checkpoint (model and
optimizer state, epoch), so that a replaced worker group resumes where the last one stopped.
Two classes train one logit with binary cross-entropy; more classes train softmax logits.
Rank 0 logs each epoch to W&B live and, at the end, the checkpoint as an artifact.

Torch uses `threads` cores per worker (the worker's CPUs). Optional keys: `encoder_lr` (the
parameters under `encoder.` learn at that rate, the rest at `lr`), `warmup_fraction` (the
learning rates rise linearly over that share of the steps, then fall linearly to zero), and
`patience` (stop once validation macro-F1 has not improved for that many epochs; only improving
epochs report a checkpoint, so the run's last checkpoint is its best).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from slipway.evaluation import classification_metrics

CHECKPOINT_FILE = "state.pt"
VALID_METRICS = ("loss", "accuracy", "macro_f1", "roc_auc", "ece")


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.dim() == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float())
    return torch.nn.functional.cross_entropy(logits, y.long())


def _proba(logits: torch.Tensor) -> np.ndarray:
    p = torch.sigmoid(logits) if logits.dim() == 1 else torch.softmax(logits, dim=-1)
    return p.float().cpu().numpy()


def _gather(parts: list[Any]) -> list[Any]:
    """Every worker's `parts`, concatenated in rank order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return parts
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, parts)
    return [part for rank_parts in everyone for part in rank_parts]


def evaluate_split(model: torch.nn.Module, valid: Any, inputs: list[str], batch_size: int,
                   device: torch.device) -> dict[str, float]:
    """Validation metrics over the whole validation split, the same on every rank: every rank
    reads the split (Ray Train does not shard it), rank r scores its batches r, r + world, ...
    through the unwrapped model (no collective per batch, so ranks may score unequal counts),
    and the scores are gathered: each row is scored once and none is dropped."""
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    net = _unwrap(model)
    net.eval()
    parts = []  # (labels, scores) of this rank's batches; a rank may have none
    with torch.no_grad():
        for i, batch in enumerate(valid.iter_torch_batches(batch_size=batch_size, device=device)):
            if i % world == rank:
                parts.append((batch["y"].cpu().numpy(),
                              _proba(net(**{k: batch[k] for k in inputs}))))
    labels, scores = zip(*_gather(parts), strict=True)
    return valid_metrics(np.concatenate(labels), np.concatenate(scores))


def valid_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """`valid_<metric>` of VALID_METRICS (log-loss as `valid_loss`): what every trainer of a
    classifier reports and registers."""
    metrics = classification_metrics(y, proba)
    metrics["loss"] = metrics.pop("log_loss")
    return {f"valid_{k}": metrics[k] for k in VALID_METRICS}


def rank_zero_run(config: dict[str, Any]) -> Any:
    """Rank 0's W&B run (Train V2 ignores `rank_zero_only`, so the rank is checked here)."""
    spec = config.get("wandb")
    if not spec or ray.train.get_context().get_world_rank() != 0:
        return None
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    os.makedirs(spec["dir"], exist_ok=True)
    return wandb.init(**spec, resume="allow")


def parameter_groups(model: torch.nn.Module, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The trainable parameters: those under `encoder.` at `encoder_lr` when it is set, the
    rest at the optimizer's `lr`."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not config.get("encoder_lr"):
        return [{"params": [p for _, p in named]}]
    encoder = [p for n, p in named if n.startswith("encoder.")]
    rest = [p for n, p in named if not n.startswith("encoder.")]
    return [{"params": rest}, {"params": encoder, "lr": config["encoder_lr"]}]


def lr_schedule(optimizer: torch.optim.Optimizer, config: dict[str, Any], world_size: int
                ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Linear warmup over `warmup_fraction` of the run's steps, then linear decay to zero; None
    without `warmup_fraction`."""
    if config.get("warmup_fraction") is None:
        return None
    from transformers import get_linear_schedule_with_warmup  # 2-3 s: only runs that warm up

    per_epoch = math.ceil(config["train_rows"] // world_size / config["batch_size"])
    steps = max(1, per_epoch * config["epochs"])
    return get_linear_schedule_with_warmup(optimizer, int(config["warmup_fraction"] * steps),
                                           steps)


def train_loop(config: dict[str, Any]) -> dict[str, int]:
    """Per-worker training; `config` holds the model class, its params, optimizer settings.
    Returns the epochs it ran to (the run's `return_value`, rank 0's)."""
    torch.set_num_threads(config["threads"])
    ray.train.torch.enable_reproducibility(seed=config["seed"])
    context = ray.train.get_context()
    model = config["model_cls"](**config["arch_params"])
    groups = parameter_groups(model, config)
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(groups, lr=config["lr"], weight_decay=config["weight_decay"])
    schedule = lr_schedule(optimizer, config, context.get_world_size())
    start_epoch, best, best_epoch = 0, -math.inf, -1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location=device,
                               weights_only=True)
        base = _unwrap(model)
        base.load_state_dict(state["model"], strict=not hasattr(base, "trained_state"))
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        start_epoch = state["epoch"] + 1
        best, best_epoch = state.get("best", best), state["epoch"]
        if context.get_world_rank() == 0:
            print(f"resuming from the checkpoint of epoch {state['epoch']}", flush=True)
    patience = config.get("patience")

    run = rank_zero_run(config)
    inputs = config["inputs"]
    train_shard = ray.train.get_dataset_shard("train")
    valid = ray.train.get_dataset_shard("valid")  # the whole split (make_trainer)
    epoch = start_epoch - 1  # a resumed run that had finished runs no epoch
    for epoch in range(start_epoch, config["epochs"]):
        maybe_fail(config, epoch)
        # Dropout draws depend on the epoch only, so a resumed run repeats the uninterrupted one.
        torch.manual_seed(config["seed"] + epoch)
        model.train()
        total, count, started = 0.0, 0, time.perf_counter()
        for batch in train_shard.iter_torch_batches(batch_size=config["batch_size"],
                                                    device=device,
                                                    local_shuffle_buffer_size=4096,
                                                    local_shuffle_seed=config["seed"] + epoch):
            logits = model(**{k: batch[k] for k in inputs})
            loss = _loss(logits, batch["y"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            total += loss.item() * len(logits)
            count += len(logits)
        seconds = time.perf_counter() - started
        metrics = {"epoch": epoch, "start_epoch": start_epoch,
                   "train_loss": total / max(count, 1), "train_samples": count,
                   # shards are equal (Ray Train splits with equal=True): the global throughput
                   "train_samples_per_s": count * context.get_world_size() / max(seconds, 1e-9),
                   **evaluate_split(model, valid, inputs, config["batch_size"], device)}
        improved = metrics["valid_macro_f1"] > best
        if improved:
            best, best_epoch = metrics["valid_macro_f1"], epoch
        # Every rank gathered the same validation metrics: all stop at the same epoch.
        stop = patience is not None and epoch - best_epoch >= patience
        last = stop or epoch == config["epochs"] - 1
        with tempfile.TemporaryDirectory() as folder:
            if context.get_world_rank() != 0 or (patience is not None and not improved):
                ray.train.report(metrics)
            else:
                torch.save({"model": trained_state(_unwrap(model)),
                            "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
                            "schedule": schedule and schedule.state_dict()},
                           os.path.join(folder, CHECKPOINT_FILE))
                if run is not None and (last or patience is not None):  # the best so far
                    log_checkpoint(run, folder, epoch)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            if run is not None:
                run.log(metrics, step=epoch)
        if stop:
            break
    if run is not None:
        run.summary["epochs_run"] = epoch + 1
        run.finish()
    return {"epochs_run": epoch + 1, "best_epoch": best_epoch}


def log_checkpoint(run: Any, folder: str, epoch: int, kind: str = "checkpoint") -> None:
    """Log a folder (a checkpoint, an adapter) as the W&B model artifact `<run id>-<kind>`."""
    import wandb

    artifact = wandb.Artifact(f"{run.id}-{kind}", type="model", metadata={"epoch": epoch})
    artifact.add_dir(folder)
    run.log_artifact(artifact)


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights worth storing: all of them, or the model's `trained_state()` if it has one."""
    return model.trained_state() if hasattr(model, "trained_state") else model.state_dict()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def maybe_fail(config: dict[str, Any], epoch: int) -> None:
    """Fault injection for tests and drills: fail once at `fail_at_epoch` on rank 0."""
    marker = config.get("fail_marker")
    if (config.get("fail_at_epoch") == epoch and marker and not os.path.exists(marker)
            and ray.train.get_context().get_world_rank() == 0):
        open(marker, "w").close()
        raise RuntimeError(f"injected worker failure at epoch {epoch}")
