"""Quantize a Hugging Face causal LM folder to int8 weights and activations (W8A8) with
llm-compressor, saved in the compressed-tensors format vLLM loads.

Run by `benchmarks/optimize.py --only llm_int8` in its own virtual environment: llm-compressor
pins an older transformers than the project's (vLLM's docs also advise separate environments).
Weights: int8 per output channel; activations: int8 per token, scaled at run time (no
calibration data); the output head stays in float.

    python benchmarks/quantize_w8a8.py SOURCE_FOLDER TARGET_FOLDER
"""

import sys

from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(source: str, target: str) -> None:
    """Quantize the model in `source` and write it with its tokenizer to `target`."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype="float32")
    oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme="W8A8",
                                                     ignore=["lm_head"]))
    model.save_pretrained(target, save_compressed=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
