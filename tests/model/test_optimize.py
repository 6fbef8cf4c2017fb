"""jobs.optimize on the platform's topic classifier: every variant (ONNX, ONNX int8, distilled,
distilled int8) is registered with lineage, loads through the registry with the runtime its
metadata names, and agrees with its parent on held-out rows; distillation moved the student
towards the teacher; the fastest variant within the macro-F1 budget gets the alias."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from jobs.optimize import OptimizeConfig
from jobs.optimize import main as optimize_job
from slipway.config import load_config
from slipway.models.onnx import OnnxTextClassifier
from slipway.models.text import TextClassifier
from slipway.optimize.distill import embed, make_student
from slipway.registry import Registry
from slipway.storage import Storage

MODEL = "article_topic"
# Least share of held-out predictions each variant must make as its parent does.
AGREEMENT = {"onnx": 1.0, "onnx_int8": 0.9, "distilled": 0.8, "distilled_int8": 0.8}


def cpu_isa() -> str:
    """This CPU's int8 instruction set, read here from its flags."""
    flags = open("/proc/cpuinfo").read().split("\nflags", 1)[1].split("\n", 1)[0].split()
    if "avx512f" in flags:
        return "avx512_vnni" if "avx512_vnni" in flags else "avx512"
    return "avx2"


@pytest.fixture(scope="module")
def optimized(platform_root, ray_session, tmp_path_factory):
    """A root with the platform's articles and topic models, optimized into every variant."""
    root = str(tmp_path_factory.mktemp("optimize") / "root")
    for folder in ("curated", f"models/{MODEL}"):
        shutil.copytree(f"{platform_root}/{folder}", f"{root}/{folder}")
    out = optimize_job(load_config(OptimizeConfig, "configs/optimize.yaml", [
        f"storage.root={root}", "tracking.mode=disabled", "measure.calls_b1=20",
        "measure.batches_b32=2", "distill.columns=[title]"]))  # short texts: a quick distillation
    return root, out


def test_every_variant_loads_through_the_registry_and_agrees_with_its_parent(optimized):
    root, out = optimized
    registry = Registry(Storage(root))
    parent_model, parent = registry.load(MODEL, "champion")
    test = pd.read_parquet(f"{parent.metadata['splits_uri']}/test.parquet")
    texts, y = test["text"].tolist(), test["label"].to_numpy()
    expected = parent_model.predict_proba(texts)
    assert sorted(out.versions) == sorted(AGREEMENT)
    for variant, registered in out.versions.items():
        model, mv = registry.load(MODEL, registered.version)
        assert mv.metadata["parent"] == {"name": MODEL, "version": parent.version}
        assert mv.metadata["method"] == variant and mv.metadata["labels"] == parent.metadata[
            "labels"]
        runtime = OnnxTextClassifier if variant != "distilled" else TextClassifier
        assert isinstance(model, runtime), variant
        proba = model.predict_proba(texts)
        agreement = (proba.argmax(1) == expected.argmax(1)).mean()
        assert agreement >= AGREEMENT[variant], (variant, agreement)
        # What the version records is what it does on the held-out rows.
        assert mv.metrics["agreement"] == pytest.approx(agreement)
        assert mv.metrics["macro_f1"] == pytest.approx(f1_score(
            y, proba.argmax(1), average="macro", labels=np.arange(proba.shape[1])))
    # ONNX Runtime computes the same function; int8 weights are about a quarter of the size.
    onnx, _ = registry.load(MODEL, out.versions["onnx"].version)
    assert np.abs(onnx.predict_proba(texts) - expected).max() < 1e-4
    sizes = out.table["size_mb"]
    assert sizes["onnx_int8"] < 0.35 * sizes["onnx"]
    assert out.versions["onnx_int8"].metadata["settings"]["isa"] == cpu_isa()
    assert sizes["distilled"] < 0.85 * sizes["fp32"]


def test_distillation_moves_the_student_towards_the_teacher(optimized):
    root, out = optimized
    registry = Registry(Storage(root))
    teacher, parent = registry.load(MODEL, "champion")
    student, mv = registry.load(MODEL, out.versions["distilled"].version)
    assert len(student.encoder.encoder.layer) == 3 == mv.metadata["settings"]["layers"]
    # On held-out texts (never distilled on), the trained student's embeddings are closer to
    # the teacher's than those of the same layers before distillation.
    texts = pd.read_parquet(f"{parent.metadata['splits_uri']}/test.parquet")["text"].tolist()
    target = embed(teacher, texts)
    before = torch.nn.functional.mse_loss(embed(make_student(teacher, 3), texts), target)
    after = torch.nn.functional.mse_loss(embed(student, texts), target)
    assert after < 0.8 * before, (float(after), float(before))


def test_the_fastest_variant_within_budget_gets_the_alias_and_the_report(optimized):
    root, out = optimized
    registry = Registry(Storage(root))
    table = out.table
    budget = table.loc["fp32", "macro_f1"] - 0.01
    eligible = table[table["macro_f1"] >= budget - 1e-12]
    fastest = eligible["texts_per_s_b32"].idxmax()
    assert out.chosen == fastest
    assert registry.aliases(MODEL)["optimized"] == int(table.loc[fastest, "version"])
    assert registry.get(MODEL, "champion").version == table.loc["fp32", "version"]  # untouched
    folder = os.path.dirname(out.report_uri.removeprefix("file://"))
    assert sorted(os.listdir(folder)) == ["tradeoffs.csv", "tradeoffs.json", "tradeoffs.png"]
    assert pd.read_csv(f"{folder}/tradeoffs.csv", index_col="variant").index.tolist() == \
        ["fp32", "onnx", "onnx_int8", "distilled", "distilled_int8"]
