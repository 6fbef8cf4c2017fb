"""Text classifiers exported to ONNX and run with ONNX Runtime, in fp32 or dynamic int8.

A variant is a folder the registry stores as a version (`runtime: onnxruntime` in its metadata):

    model.onnx        encoder + mean pooling + head, inputs input_ids and attention_mask (int64,
                      any batch and length), output `probabilities`
    tokenizer files   the encoder's tokenizer
    settings.json     max_length, labels

Int8 quantization is ONNX Runtime's dynamic quantization (weights int8 ahead of time,
activations quantized per batch at run time) with settings for the machine's instruction set:
without VNNI, x86 int8 products of unsigned activations and signed weights can saturate, so
weights keep 7 bits (`reduce_range`); with VNNI or on arm64 they keep 8.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slipway.errors import SlipwayError
from slipway.models.text import TextClassifier, tokenize
from slipway.registry import ModelVersion, runtime

MODEL_FILE = "model.onnx"
OPSET = 17
# Settings of onnxruntime.quantization.quantize_dynamic per instruction set.
INT8_SETTINGS: dict[str, dict[str, Any]] = {
    "avx512_vnni": {"per_channel": True, "reduce_range": False},
    "avx512": {"per_channel": True, "reduce_range": True},
    "avx2": {"per_channel": True, "reduce_range": True},
    "arm64": {"per_channel": True, "reduce_range": False},
}


def detect_isa(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """The best int8 instruction set of this CPU: avx512_vnni, avx512, avx2 or arm64."""
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    if cpuinfo is None:
        cpuinfo = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                      if line.startswith("flags")), []))
    if {"avx512f", "avx512_vnni"} <= flags or {"avx512f", "avx512vnni"} <= flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    raise SlipwayError(f"int8 quantization needs avx2, avx512 or arm64; this {machine} CPU has "
                       "none: leave onnx_int8 and distilled_int8 out of `variants`")


class _Probabilities(torch.nn.Module):
    """The classifier from token ids to class probabilities, as exported."""

    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(input_ids=input_ids, attention_mask=attention_mask), -1)


def export(model: TextClassifier, labels: list[str], folder: str) -> str:
    """Write `model` as an ONNX variant folder (model, tokenizer, settings); the folder."""
    os.makedirs(folder, exist_ok=True)
    tokenizer = model.tokenizer
    sample = tokenize(tokenizer, ["an example", "another example text"], model.max_length,
                      fixed=False)
    wrapped = _Probabilities(model.eval())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it treats as constant
        torch.onnx.export(
            wrapped, (torch.from_numpy(sample["input_ids"]),
                      torch.from_numpy(sample["attention_mask"])),
            os.path.join(folder, MODEL_FILE), input_names=["input_ids", "attention_mask"],
            output_names=["probabilities"], opset_version=OPSET, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                          "attention_mask": {0: "batch", 1: "length"},
                          "probabilities": {0: "batch"}})
    tokenizer.save_pretrained(folder)
    Path(folder, "settings.json").write_text(json.dumps(
        {"max_length": model.max_length, "labels": labels}))
    return folder


def quantize(source: str, folder: str, isa: str) -> dict[str, Any]:
    """Write the dynamic int8 quantization of the ONNX variant in `source` to `folder`, with the
    settings of instruction set `isa`; the settings used."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if isa not in INT8_SETTINGS:
        raise SlipwayError(f"int8 isa {isa!r} is not supported; choose one of "
                           f"{sorted(INT8_SETTINGS)} or auto")
    shutil.copytree(source, folder, dirs_exist_ok=True)
    prepared = os.path.join(folder, "prepared.onnx")
    quant_pre_process(os.path.join(source, MODEL_FILE), prepared, skip_symbolic_shape=True)
    settings = {"isa": isa, "weight_type": "QInt8", **INT8_SETTINGS[isa]}
    quantize_dynamic(prepared, os.path.join(folder, MODEL_FILE), weight_type=QuantType.QInt8,
                     per_channel=settings["per_channel"], reduce_range=settings["reduce_range"])
    os.remove(prepared)
    return settings


class OnnxTextClassifier:
    """An ONNX variant folder run with ONNX Runtime (all graph optimizations, one intra-op
    thread per CPU this process may use); `predict_proba` as TextClassifier's."""

    def __init__(self, folder: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        from slipway.models.hf import load_tokenizer

        settings = json.loads(Path(folder, "settings.json").read_text())
        self.max_length, self.labels = settings["max_length"], settings["labels"]
        self.tokenizer = load_tokenizer(folder)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(folder, MODEL_FILE), options,
                                            providers=["CPUExecutionProvider"])

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities for raw texts, shape (len(texts), classes)."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = tokenize(self.tokenizer, texts[start:start + batch_size], self.max_length,
                              fixed=False)
            out.append(self.session.run(["probabilities"], tokens)[0])
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)


@runtime("onnxruntime")
def load_onnx(folder: str, mv: ModelVersion) -> OnnxTextClassifier:
    """The registry's loader for ONNX variants."""
    return OnnxTextClassifier(folder)
