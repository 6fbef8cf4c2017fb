"""Build DeepSpeed's just-in-time C++ ops for this machine into `TORCH_EXTENSIONS_DIR`.

`make setup` runs `python -m llm.deepspeed_ops` once per environment: CPU Adam (ZeRO's optimizer
offload) and, on CPU machines, the shared-memory collectives take about two minutes to compile,
and would otherwise be compiled inside the first training run that needs them.
"""

from __future__ import annotations

OPS = ("CPUAdamBuilder", "ShareMemCommBuilder")


def build() -> list[str]:
    """Compile (or load from the cache) every op this accelerator has; return their names."""
    from deepspeed.accelerator import get_accelerator

    built = []
    for name in OPS:
        builder = get_accelerator().create_op_builder(name)
        if builder is not None:  # e.g. no shared-memory collectives on a CUDA accelerator
            builder.load()
            built.append(builder.NAME)
    return built


if __name__ == "__main__":
    print(f"DeepSpeed ops ready: {', '.join(build())}")
