"""Merge a LoRA adapter into its base and register the result as a plain HF model folder.

For serving engines that take one model directory rather than base + adapter. The merged model
is registered as `<adapter name>_merged` (kind `merged_lm`) with the adapter and base in its
lineage; its logits equal those of base + adapter to float precision.
"""

from __future__ import annotations

import tempfile

from pydantic import Field

from llm.base import load_tuned, resolve
from slipway.cli import run_job
from slipway.config import JobConfig
from slipway.models.hf import load_tokenizer
from slipway.registry import ModelVersion, Registry
from slipway.storage import Storage
from slipway.tracking import track_run


class MergeConfig(JobConfig):
    """The adapter to merge."""

    model_name: str = "articles_lora"
    ref: str | int = Field(default="champion", description="alias or version number")


def main(cfg: MergeConfig) -> ModelVersion:
    """Merge the adapter's weights into the base and register the merged folder."""
    storage = Storage(cfg.storage.root)
    registry = Registry(storage)
    with track_run("merge_adapter", cfg, storage, wandb_run=False) as run:
        adapter_path, mv = registry.fetch(cfg.model_name, cfg.ref)
        base_path, _ = resolve(mv.metadata["base"], storage)
        merged = load_tuned(base_path, adapter_path).merge_and_unload()
        with tempfile.TemporaryDirectory() as folder:
            merged.save_pretrained(folder)
            load_tokenizer(base_path).save_pretrained(folder)
            version = registry.register_folder(
                f"{cfg.model_name}_merged", folder, kind="merged_lm", base=mv.metadata["base"],
                adapter=f"registry:{mv.name}@{mv.version}", metrics=mv.metrics,
                code_version=run.git_sha, parent_run=run.run_id)
    print(f"{cfg.model_name} v{mv.version} merged into {mv.metadata['base']}: "
          f"registry:{version.name}@{version.version}")
    return version


if __name__ == "__main__":
    run_job(MergeConfig, main, __doc__)
