"""The Ray Train loop for binary classifiers over a tensor column `x` and a label column `y`.

Runs on every worker of a `TorchTrainer`: data comes from Ray Data shards, the model is wrapped
for DDP (gloo on CPU, NCCL on GPU), and every epoch reports metrics and a checkpoint (model and
optimizer state, epoch) so that a replaced worker group resumes where the last one stopped.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from sklearn.metrics import roc_auc_score

CHECKPOINT_FILE = "state.pt"


def _evaluate(model: torch.nn.Module, shard: Any, batch_size: int, device: torch.device
              ) -> dict[str, float]:
    model.eval()
    losses, scores, labels = [], [], []
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=batch_size, device=device):
            logits = model(batch["x"])
            y = batch["y"].float()
            losses.append(torch.nn.functional.binary_cross_entropy_with_logits(
                logits, y, reduction="sum").item())
            scores.append(torch.sigmoid(logits).cpu().numpy())
            labels.append(y.cpu().numpy())
    y_all, s_all = np.concatenate(labels), np.concatenate(scores)
    auc = roc_auc_score(y_all, s_all) if 0 < y_all.sum() < len(y_all) else float("nan")
    return {"valid_loss": float(np.sum(losses) / max(len(y_all), 1)), "valid_auc": float(auc)}


def train_loop(config: dict[str, Any]) -> None:
    """Per-worker training; `config` holds the model class, its params, optimizer settings."""
    ray.train.torch.enable_reproducibility(seed=config["seed"])
    context = ray.train.get_context()
    model = config["model_cls"](**config["arch_params"])
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"],
                                  weight_decay=config["weight_decay"])
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location=device,
                               weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1

    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    for epoch in range(start_epoch, config["epochs"]):
        _maybe_fail(config, epoch)
        model.train()
        total, count = 0.0, 0
        for batch in train_shard.iter_torch_batches(batch_size=config["batch_size"],
                                                    device=device,
                                                    local_shuffle_buffer_size=4096,
                                                    local_shuffle_seed=config["seed"] + epoch):
            logits = model(batch["x"])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits,
                                                                        batch["y"].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(logits)
            count += len(logits)
        metrics = {"epoch": epoch, "train_loss": total / max(count, 1),
                   "train_samples": count, **_evaluate(model, valid_shard,
                                                       config["batch_size"], device)}
        with tempfile.TemporaryDirectory() as folder:
            if context.get_world_rank() == 0:
                torch.save({"model": _unwrap(model).state_dict(),
                            "optimizer": optimizer.state_dict(), "epoch": epoch},
                           os.path.join(folder, CHECKPOINT_FILE))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            else:
                ray.train.report(metrics)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _maybe_fail(config: dict[str, Any], epoch: int) -> None:
    """Fault injection for tests and drills: fail once at `fail_at_epoch` on rank 0."""
    marker = config.get("fail_marker")
    if (config.get("fail_at_epoch") == epoch and marker and not os.path.exists(marker)
            and ray.train.get_context().get_world_rank() == 0):
        open(marker, "w").close()
        raise RuntimeError(f"injected worker failure at epoch {epoch}")
