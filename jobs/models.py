"""List registered models: versions, aliases, and the champion's metrics and lineage."""

from __future__ import annotations

from slipway.cli import run_job
from slipway.config import JobConfig
from slipway.registry import Registry
from slipway.storage import Storage


class ModelsConfig(JobConfig):
    """Only the storage root is needed."""


def main(cfg: ModelsConfig) -> dict[str, dict]:
    """Print one block per model; return {name: {"aliases": ..., "versions": ...}}."""
    storage = Storage(cfg.storage.root)
    registry = Registry(storage)
    names = sorted({f.split("/models/", 1)[1].split("/", 1)[0]
                    for f in storage.list_files("models") if f.endswith("metadata.json")})
    summary = {}
    for name in names:
        aliases = registry.aliases(name)
        versions = registry.versions(name)
        summary[name] = {"aliases": aliases, "versions": versions}
        print(f"{name}: versions {versions}; aliases "
              + (", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())) or "none"))
        if "champion" in aliases:
            mv = registry.get(name, "champion")
            print(f"  champion v{mv.version} ({mv.metadata['task']}), validation: "
                  + ", ".join(f"{k.removeprefix('valid_')} {v:.3f}"
                              for k, v in mv.metrics.items())
                  + f"; run {mv.metadata['parent_run']}, code {mv.metadata['code_version'][:8]}")
    if not names:
        print(f"no models under {storage.uri('models')}; train one with `python -m jobs.train`")
    return summary


if __name__ == "__main__":
    run_job(ModelsConfig, main, __doc__)
