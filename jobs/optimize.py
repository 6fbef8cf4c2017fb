"""Faster variants of a registered text classifier, each measured and registered with lineage.

From the version `ref` names, builds the variants asked for: `onnx` (ONNX Runtime, all graph
optimizations), `onnx_int8` (its dynamic int8 quantization for this CPU's instruction set),
`distilled` (an encoder with fewer layers trained to match the parent's embeddings on unlabelled
text from the storage root, then its head retrained) and `distilled_int8` (the student in ONNX,
int8). Each is scored on the parent's held-out split (macro-F1, agreement with the parent),
timed (p50/p99 at batch 1, texts/s at batch 32) and sized, and registered as the next version
of the same model with its parent, method and settings. The trade-off table and plot land
beside the parent version and in W&B; the fastest variant within `max_f1_loss` of the parent's
macro-F1 gets the alias `alias` (serve it with the classifier's `ref`).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import ray
from pydantic import Field

from slipway.cli import run_job
from slipway.config import JobConfig, StrictModel
from slipway.data.tables import read_table
from slipway.errors import SlipwayError
from slipway.models import onnx
from slipway.models.text import TextClassifier
from slipway.optimize import distill, measure
from slipway.registry import ModelVersion, Registry, RegistryError
from slipway.runtime import init_ray
from slipway.storage import Storage
from slipway.tracking import JobRun, track_run

Variant = Literal["onnx", "onnx_int8", "distilled", "distilled_int8"]


class DistillSettings(StrictModel):
    """The student and its training."""

    layers: int = Field(default=3, ge=1, description="encoder layers the student keeps")
    path: str | None = Field(default=None, description="unlabelled text (CSV, JSON-lines, "
                             "Parquet); None: the table the parent was trained on")
    columns: list[str] | None = Field(default=None, min_length=1, description=(
        "columns whose values are texts to distil on; None: the parent's text columns"))
    max_texts: int = Field(default=20_000, ge=10)
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    head_epochs: int = Field(default=20, ge=1)
    head_lr: float = Field(default=3e-3, gt=0)


class MeasureSettings(StrictModel):
    """How long each variant is timed."""

    calls_b1: int = Field(default=200, ge=10, description="one-text calls timed")
    batches_b32: int = Field(default=20, ge=1, description="batches of 32 timed")


class OptimizeConfig(JobConfig):
    """Which version to optimize, into which variants, and the accuracy budget."""

    model_name: str = "article_topic"
    ref: str | int = Field(default="champion", description="alias or version number")
    variants: list[Variant] = Field(
        default_factory=lambda: ["onnx", "onnx_int8", "distilled", "distilled_int8"],
        min_length=1)
    isa: Literal["auto", "avx2", "avx512", "avx512_vnni", "arm64"] = Field(
        default="auto", description="int8 instruction set; auto: this machine's")
    distill: DistillSettings = DistillSettings()
    measure: MeasureSettings = MeasureSettings()
    max_f1_loss: float = Field(default=0.01, ge=0, le=1,
                               description="macro-F1 a chosen variant may lose (0.01 = 1 point)")
    rank_by: Literal["texts_per_s_b32", "p50_ms_b1"] = "texts_per_s_b32"
    alias: str | None = Field(default="optimized", description="alias moved to the chosen "
                              "variant (the parent when none is faster within budget)")
    seed: int = 0


@dataclass
class OptimizeResult:
    """The trade-off table (a row per variant, `fp32` the parent), the registered variants by
    name, and the chosen one."""

    table: pd.DataFrame
    versions: dict[str, ModelVersion]
    chosen: str
    report_uri: str


def distil_texts(cfg: DistillSettings, parent: ModelVersion, storage: Storage,
                 held_out: set[str]) -> list[str]:
    """Unlabelled texts for distillation: distinct values of the configured columns, the
    held-out split's texts left out."""
    source = parent.metadata.get("config", {}).get("text", {})
    path = cfg.path or source.get("path")
    columns = cfg.columns or source.get("text_columns")
    if not path or not columns:
        raise SlipwayError("distill.path and distill.columns are needed: the parent "
                           f"{parent.name} v{parent.version} records no training table")
    frame = read_table(path, storage, "distill.path")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SlipwayError(f"distill.columns {missing} are not in {path}; its columns are "
                           f"{list(frame.columns)}")
    texts = pd.unique(pd.concat([frame[c].dropna().astype(str).str.strip() for c in columns]))
    texts = [t for t in texts if t and t not in held_out]
    rng = np.random.default_rng(0)
    return [texts[i] for i in sorted(rng.permutation(len(texts))[:cfg.max_texts])]


def profile(model: measure.TextModel, test: pd.DataFrame, parent_pred: np.ndarray,
            cfg: MeasureSettings, size_mb: float) -> dict[str, float]:
    """Quality, latency, throughput and size of one variant."""
    texts = test["text"].tolist()
    p50, p99 = measure.latency_ms(model, texts, cfg.calls_b1)
    return {**measure.quality(model.predict_proba(texts), test["label"].to_numpy(), parent_pred),
            "p50_ms_b1": p50, "p99_ms_b1": p99,
            "texts_per_s_b32": measure.texts_per_s(model, texts, cfg.batches_b32),
            "size_mb": size_mb}


def main(cfg: OptimizeConfig) -> OptimizeResult:
    """Build, measure and register the variants; write the trade-off table and plot."""
    storage = Storage(cfg.storage.root)
    registry = Registry(storage)
    with track_run("optimize", cfg, storage) as run:
        try:
            model, parent = registry.load(cfg.model_name, cfg.ref)
        except RegistryError as exc:
            raise SlipwayError(f"{exc}; train one with `python -m jobs.train`") from None
        if not isinstance(model, TextClassifier):
            raise SlipwayError(f"{cfg.model_name} v{parent.version} is not a torch text "
                               "classifier (it is itself a variant?): set `ref` to the version "
                               "trained by jobs.train")
        splits = parent.metadata["splits_uri"]
        test = pd.read_parquet(f"{splits}/test.parquet")
        labels = parent.metadata["labels"]
        isa = onnx.detect_isa() if cfg.isa == "auto" else cfg.isa
        parent_pred = model.predict_proba(test["text"].tolist()).argmax(1)
        rows = {"fp32": profile(model, test, parent_pred, cfg.measure, measure.state_mb(model))}
        lineage = {"task": "text", "labels": labels, "splits_uri": splits,
                   "parent": {"name": parent.name, "version": parent.version},
                   "data_versions": parent.metadata.get("data_versions", {}),
                   "code_version": run.git_sha, "parent_run": run.run_id}
        versions: dict[str, ModelVersion] = {}
        with tempfile.TemporaryDirectory() as tmp:
            def register_onnx(variant: str, folder: str, settings: dict) -> None:
                rows[variant] = profile(onnx.OnnxTextClassifier(folder), test, parent_pred,
                                        cfg.measure, measure.folder_mb(folder))
                versions[variant] = registry.register_folder(
                    cfg.model_name, folder, kind="text_classifier", runtime="onnxruntime",
                    method=variant, settings=settings, metrics=rows[variant], **lineage)

            if {"onnx", "onnx_int8"} & set(cfg.variants):
                fp32 = onnx.export(model, labels, f"{tmp}/onnx")
                if "onnx" in cfg.variants:
                    register_onnx("onnx", fp32, {"opset": onnx.OPSET})
                if "onnx_int8" in cfg.variants:
                    settings = onnx.quantize(fp32, f"{tmp}/onnx_int8", isa)
                    register_onnx("onnx_int8", f"{tmp}/onnx_int8", settings)
            if {"distilled", "distilled_int8"} & set(cfg.variants):
                student, settings = train_student(cfg, model, parent, storage, set(test["text"]))
                run.log({f"distill/{k}": v for k, v in settings.items()
                         if isinstance(v, float)})
                if "distilled" in cfg.variants:
                    rows["distilled"] = profile(student, test, parent_pred, cfg.measure,
                                                measure.state_mb(student))
                    params = {**parent.metadata["architecture"]["params"],
                              "encoder_layers": cfg.distill.layers}
                    versions["distilled"] = registry.register(
                        cfg.model_name, student.trained_state(), "TextClassifier", params,
                        method="distilled", settings=settings, metrics=rows["distilled"],
                        **lineage)
                if "distilled_int8" in cfg.variants:
                    folder = onnx.export(student, labels, f"{tmp}/student")
                    int8 = onnx.quantize(folder, f"{tmp}/distilled_int8", isa)
                    register_onnx("distilled_int8", f"{tmp}/distilled_int8",
                                  {**settings, **int8})
        table = pd.DataFrame(rows).T[["macro_f1", "agreement", "p50_ms_b1", "p99_ms_b1",
                                      "texts_per_s_b32", "size_mb"]]
        table["version"] = [parent.version] + [versions[v].version for v in table.index[1:]]
        chosen = measure.choose(table, cfg.max_f1_loss, cfg.rank_by)
        if cfg.alias:
            registry.set_alias(cfg.model_name, cfg.alias, int(table.loc[chosen, "version"]),
                               reason=f"{run.run_id}: fastest by {cfg.rank_by} within "
                                      f"{cfg.max_f1_loss} macro-F1")
        report_uri = write_report(registry, parent, table, chosen, isa, cfg, run)
    print(f"{cfg.model_name} v{parent.version} variants on {len(test):,} held-out rows "
          f"(int8 for {isa}):\n{table.to_string(float_format=lambda v: f'{v:.3f}')}\n"
          f"chosen: {chosen} (v{int(table.loc[chosen, 'version'])}"
          + (f", alias {cfg.alias}" if cfg.alias else "") + f"); report: {report_uri}")
    return OptimizeResult(table=table, versions=versions, chosen=chosen, report_uri=report_uri)


def train_student(cfg: OptimizeConfig, teacher: TextClassifier, parent: ModelVersion,
                  storage: Storage, held_out: set[str]) -> tuple[TextClassifier, dict]:
    """The distilled student with its head retrained, and the settings and losses to record."""
    init_ray(cfg.ray)  # the unlabelled table is read with Ray Data
    texts = distil_texts(cfg.distill, parent, storage, held_out)
    try:
        student = distill.make_student(teacher, cfg.distill.layers)
    except ValueError as exc:
        raise SlipwayError(str(exc)) from None
    d = cfg.distill
    losses = distill.distill(student, teacher, texts, d.epochs, d.batch_size, d.lr, cfg.seed)
    splits = parent.metadata["splits_uri"]
    train, valid = (pd.read_parquet(f"{splits}/{s}.parquet") for s in ("train", "valid"))
    valid_f1 = distill.fit_head(student, (train["text"].tolist(), train["label"].to_numpy()),
                                (valid["text"].tolist(), valid["label"].to_numpy()),
                                d.head_epochs, d.batch_size, d.head_lr, cfg.seed)
    layers = distill.kept_layers(len(teacher.encoder.encoder.layer), d.layers)
    return student, {"layers": d.layers, "teacher_layers": layers, "texts": len(texts),
                     "epochs": d.epochs, "distill_mse": losses[-1],
                     "distill_mse_first_epoch": losses[0], "head_valid_macro_f1": valid_f1}


def write_report(registry: Registry, parent: ModelVersion, table: pd.DataFrame, chosen: str,
                 isa: str, cfg: OptimizeConfig, run: JobRun) -> str:
    """The trade-off table (JSON and CSV) and plot beside the parent version, and in W&B."""
    folder = ("optimize", run.run_id)
    report = {"model": cfg.model_name, "parent": parent.version, "isa": isa, "chosen": chosen,
              "max_f1_loss": cfg.max_f1_loss, "rank_by": cfg.rank_by,
              "variants": json.loads(table.to_json(orient="index"))}
    uri = registry.write_file(cfg.model_name, parent.version,
                              json.dumps(report, indent=2).encode(), *folder, "tradeoffs.json")
    buf = io.StringIO()
    table.to_csv(buf, index_label="variant")
    registry.write_file(cfg.model_name, parent.version, buf.getvalue().encode(), *folder,
                        "tradeoffs.csv")
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "tradeoffs.png")
        measure.plot(table, png)
        with open(png, "rb") as f:
            registry.write_file(cfg.model_name, parent.version, f.read(), *folder,
                                "tradeoffs.png")
        if run.wandb_run is not None:
            import wandb

            run.wandb_run.log({"tradeoffs": wandb.Table(dataframe=table.reset_index(
                names="variant")), "tradeoffs_plot": wandb.Image(png)})
    run.log({f"{variant}/{k}": float(v) for variant, row in table.iterrows()
             for k, v in row.items()})
    return uri


if __name__ == "__main__":
    run_job(OptimizeConfig, main, __doc__)
    ray.shutdown()
