"""Where a causal language model comes from, and loading it with transformers' Auto classes.

A model reference is one of:

    registry:NAME[@REF]    a version registered on the storage root (REF: alias or number,
                           default `champion`), e.g. `registry:base_lm` from `jobs.bootstrap_llm`
    /a/local/folder        a Hugging Face model directory
    s3://... or gs://...   such a directory in object storage, copied once to a local cache
    org/model-id           a Hugging Face hub id (needs network: unset HF_HUB_OFFLINE)
"""

from __future__ import annotations

import hashlib

import torch

from slipway.models.hf import quiet_transformers
from slipway.registry import ModelVersion, Registry
from slipway.storage import Storage, local_cache

REGISTRY_PREFIX = "registry:"


def parse_registry_ref(ref: str) -> tuple[str, str]:
    """`registry:NAME[@REF]` as (name, ref)."""
    name, _, version = ref.removeprefix(REGISTRY_PREFIX).partition("@")
    return name, version or "champion"


def resolve(ref: str, storage: Storage) -> tuple[str, ModelVersion | None]:
    """A path (or hub id) transformers can load `ref` from, and its registry version if any."""
    if ref.startswith(REGISTRY_PREFIX):
        name, version = parse_registry_ref(ref)
        return Registry(storage).fetch(name, version)
    if ref.startswith(("s3://", "gs://")):
        local = local_cache("remote", hashlib.sha256(ref.encode()).hexdigest()[:16])
        return Storage(ref).download(local), None
    return ref, None


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The causal language model at `path`, in eval mode."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def load_tuned(base_path: str, adapter_path: str | None) -> torch.nn.Module:
    """The base model with a LoRA adapter applied (not merged); the base alone without one."""
    model = load_causal_lm(base_path)
    if adapter_path is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_path).eval()
