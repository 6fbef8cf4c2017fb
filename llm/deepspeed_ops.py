"""Build DeepSpeed's just-in-time C++ ops for this machine into `TORCH_EXTENSIONS_DIR`.

`make setup` runs `python -m llm.deepspeed_ops` once per environment: CPU Adam (ZeRO's optimizer
offload) and, on CPU machines, the shared-memory collectives take about two minutes to compile,
and would otherwise be compiled inside the first training run that needs them.
"""

from __future__ import annotations

import os

OPS = ("CPUAdamBuilder", "ShareMemCommBuilder")


def use_packaged_ninja() -> None:
    """Put the `ninja` package's binary (DeepSpeed's dependency) first on this process's PATH.

    torch builds and checks the ops with whichever `ninja` PATH finds first, and ninja releases
    hash build commands differently: a process that found the system's ninja (1.11 here) and a Ray
    worker that found the environment's (1.13) each took the other's build for stale and compiled
    both ops again. Every process that loads an op calls this first, so all use one ninja, and a
    worker whose PATH has no ninja at all can still build.
    """
    import ninja

    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != ninja.BIN_DIR:
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path])


def build() -> list[str]:
    """Compile (or load from the cache) every op this accelerator has; return their names."""
    from deepspeed.accelerator import get_accelerator

    use_packaged_ninja()
    built = []
    for name in OPS:
        builder = get_accelerator().create_op_builder(name)
        if builder is not None:  # e.g. no shared-memory collectives on a CUDA accelerator
            builder.load()
            built.append(builder.NAME)
    return built


if __name__ == "__main__":
    print(f"DeepSpeed ops ready: {', '.join(build())}")
