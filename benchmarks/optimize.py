"""Optimization benchmark: faster variants of a text classifier trained on real text, and how much
of the hardware the Serve app turns into answers.

1. A text classifier (frozen MiniLM + head, `jobs.train`) on the one-line summaries of this
   machine's manual pages, labelled by section (slipway/data/man_pages.py): real text nobody here
   wrote. `jobs.optimize` builds its variants (`onnx`, `onnx_int8`, `distilled`,
   `distilled_int8`), each scored on the parent's held-out split (macro-F1, agreement) and timed
   in this process (p50/p99 at batch 1, texts/s at batch 32), and registers them.
2. The Serve app (one Classifier replica, batching 32, answer cache bypassed) serves the parent
   (`fp32`) and then the chosen variant by user_config; one-text `/v1/classify` requests at
   concurrency 32 give `serve_rps_c32`, beside the same variant's `offline_texts_per_s` (batch
   32, in process) from step 1.
3. The answer cache on the chosen variant: one-text requests at concurrency 1, texts new to the
   cache (misses), then the same texts again (hits).
4. `--only prefix`: vLLM's automatic prefix caching on RAG-shaped prompts (a shared instruction
   and context prefix, a distinct question) on a random Llama (`--gen-hidden`, `--gen-layers`):
   time to first token (requests one at a time, one output token) with the cache on against
   off, as `vllm_prefix_cache_ttft_ratio`; updates the key in the existing file.
5. `--only sweep`: the served variant (alias `optimized`) under replicas x threads x batch size
   and wait (SWEEP), Classifier and Retriever requests/s and p99 at concurrency 32, as
   `batching_sweep`.
6. `--only llm_int8`: vLLM on llm-compressor's W8A8 quantization of the merged LoRA champion
   against fp32 (held-out answers scored and compared, decode tokens/s), as `llm_int8`.

Writes results/optimize.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import httpx
import ray

from benchmarks.common import env_info, update_results, write_results
from benchmarks.platform import ensure_platform
from benchmarks.serve import (
    HEADERS,
    KEY,
    app_environment,
    load,
    serve_config,
    with_classifier,
)
from slipway.local import free_port

MODEL = "man_sections"
VARIANTS = ("fp32", "onnx", "onnx_int8", "distilled", "distilled_int8")
KEYS = ("texts_per_s_b32", "p50_ms_b1", "p99_ms_b1", "macro_f1", "agreement", "size_mb")


def train_and_optimize(root: str, per_section: int) -> tuple[object, list[str]]:
    """The man-page section classifier (champion) and jobs.optimize's result on it; the texts."""
    from jobs.optimize import OptimizeConfig
    from jobs.optimize import main as optimize_job
    from jobs.train import TrainConfig
    from jobs.train import main as train_job
    from slipway.config import load_config
    from slipway.data.man_pages import man_page_summaries
    from slipway.registry import Registry
    from slipway.storage import Storage

    pages = man_page_summaries(per_section)
    os.makedirs(f"{root}/raw", exist_ok=True)
    pages.to_csv(f"{root}/raw/man_pages.csv", index=False)
    common = [f"storage.root={root}", "tracking.mode=disabled"]
    trained = train_job(load_config(TrainConfig, "configs/train_text.yaml", [
        *common, f"model_name={MODEL}", "text.path=raw/man_pages.csv", "text.text_columns=[text]",
        "text.label_column=label", "text.max_length=48"]))
    Registry(Storage(root)).set_alias(MODEL, "champion", trained.version.version, "benchmark")
    out = optimize_job(load_config(OptimizeConfig, "configs/optimize.yaml", [
        *common, f"model_name={MODEL}", "distill.columns=null", "distill.epochs=5"]))
    return out, pages["text"].tolist()


def cache_latency(url: str, texts: list[str], requests: int) -> dict:
    """One-text /v1/classify at concurrency 1 through the answer cache: `requests` texts new to
    it (misses), then the same texts again (hits); p50/p99 of each pass."""
    bodies = [{"texts": [f"{texts[i % len(texts)]} ({i})"]} for i in range(requests)]
    headers = {"Authorization": f"Bearer {KEY}"}
    passes = {name: asyncio.run(load(url, "/v1/classify", bodies, 1, headers))
              for name in ("miss", "hit")}
    assert passes["miss"]["x_cache"] == {"miss": requests}, passes["miss"]["x_cache"]
    assert passes["hit"]["x_cache"] == {"hit": requests}, passes["hit"]["x_cache"]
    return passes


def start_app(root: str) -> tuple[object, str, dict]:
    """A local Ray for the app: its Serve client, the app's URL and the shipped config on
    `root` serving the man-page classifier."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    context = ray.init(num_cpus=os.cpu_count(), logging_level="ERROR", log_to_driver=False)
    port = free_port()
    base = serve_config(root, port)
    base["applications"][0]["args"]["classifier_model"] = MODEL
    client = ServeSubmissionClient(f"http://{context.dashboard_url}")
    return client, f"http://127.0.0.1:{port}", base


def serve_rps(root: str, texts: list[str], refs: dict[str, int], requests: int) -> dict:
    """`/v1/classify` requests/s at concurrency 32 for each served version (one Classifier
    replica), then the cache's miss and hit latency on the last."""
    from ray import serve

    from serve_apps.client import wait_ready

    client, url, base = start_app(root)
    bodies = [{"texts": [texts[i % len(texts)]]} for i in range(requests)]
    out: dict = {}
    try:
        for name, version in refs.items():
            config = with_classifier(base, num_replicas=1)
            for d in config["applications"][0]["deployments"]:
                if d["name"] == "Classifier":
                    d["user_config"]["ref"] = version
            client.deploy_applications(config)
            wait_ready(url, 420)
            deadline = time.monotonic() + 120  # until the replica serves this version
            while time.monotonic() < deadline:
                reply = httpx.post(f"{url}/v1/classify", json=bodies[0], headers=HEADERS)
                if reply.json()["version"] == version:
                    break
                time.sleep(0.5)
            asyncio.run(load(url, "/v1/classify", bodies[:64], 32))  # warm up
            out[name] = asyncio.run(load(url, "/v1/classify", bodies, 32))
        out["cache"] = cache_latency(url, texts, min(requests, 200))
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


SWEEP = {  # (replicas, threads per replica) -> (max_batch_size, batch_wait_timeout_s) tried
    (1, 1): [(1, 0.0), (8, 0.005), (32, 0.005), (32, 0.02)],
    (1, 2): [(1, 0.0), (8, 0.005), (32, 0.005), (32, 0.02)],
    (2, 1): [(8, 0.005), (32, 0.005)],
    (2, 2): [(8, 0.005), (32, 0.005)],
}


def batching_sweep(root: str, texts: list[str], version: int, requests: int) -> list[dict]:
    """`/v1/classify` (one text per request, concurrency 32) and `/v1/retrieve` requests/s and
    p50/p99 for each point of SWEEP on `version`: replicas and threads per replica (torch and
    ONNX Runtime read OMP_NUM_THREADS; Ray sets it to 1 for a replica of under one CPU) are
    redeployed, batch settings applied in place by user_config."""
    from ray import serve

    from benchmarks.serve import classifier_settled
    from serve_apps.client import wait_ready

    client, url, base = start_app(root)
    bodies = [{"texts": [texts[i % len(texts)]]} for i in range(requests)]
    queries = [{"query": texts[i % len(texts)], "k": 5} for i in range(requests)]
    rows: list[dict] = []
    try:
        for (replicas, threads), batching in SWEEP.items():
            for size, wait in batching:
                config = with_classifier(base, num_replicas=replicas)
                for d in config["applications"][0]["deployments"]:
                    if d["name"] in ("Classifier", "Retriever"):
                        d["ray_actor_options"]["runtime_env"] = {
                            "env_vars": {"OMP_NUM_THREADS": str(threads)}}
                    if d["name"] == "Classifier":
                        d["user_config"].update(ref=version, max_batch_size=size,
                                                batch_wait_timeout_s=wait)
                client.deploy_applications(config)
                time.sleep(3)  # the controller picks the new config up
                wait_ready(url, 420)
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline and not classifier_settled(replicas):
                    time.sleep(1)
                asyncio.run(load(url, "/v1/classify", bodies[:64], 32))  # warm up
                row = {"replicas": replicas, "threads": threads, "max_batch_size": size,
                       "batch_wait_timeout_s": wait,
                       **asyncio.run(load(url, "/v1/classify", bodies, 32))}
                row.pop("x_cache")
                if size == 32 and wait == 0.005:  # the retriever's query path, same threads
                    asyncio.run(load(url, "/v1/retrieve", queries[:64], 32))
                    got = asyncio.run(load(url, "/v1/retrieve", queries, 32))
                    row.update({f"retrieve_{k}": got[k] for k in ("rps", "p50_ms", "p99_ms")})
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def prefix_cache_ttft(root: str, hidden: int, layers: int, prefix: int, suffix: int,
                      requests: int = 12, seed: int = 0) -> dict:
    """Median time to first token with vLLM's prefix caching on and off: `requests` prompts of
    one shared `prefix` and distinct `suffix` token ids, sent one at a time (after one that
    fills the cache)."""
    import gc
    import statistics

    import numpy as np

    from llm.base import resolve
    from llm.bootstrap import LlamaShape, init_model
    from slipway.models.hf import load_tokenizer
    from slipway.storage import Storage, local_cache

    os.environ.setdefault("VLLM_CACHE_ROOT", local_cache("vllm"))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = load_tokenizer(resolve("registry:base_lm", Storage(root))[0])
    shape = LlamaShape(hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                       num_hidden_layers=layers, num_attention_heads=hidden // 64,
                       num_key_value_heads=hidden // 64,
                       max_position_embeddings=prefix + suffix + 16)
    rng = np.random.default_rng(seed)
    shared = [tokenizer.bos_token_id, *rng.integers(3, len(tokenizer), prefix - 1).tolist()]
    prompts = [TokensPrompt(prompt_token_ids=shared + rng.integers(
        3, len(tokenizer), suffix).tolist()) for _ in range(requests + 1)]
    one = SamplingParams(max_tokens=1, temperature=0)
    out: dict = {"prefix_tokens": prefix, "suffix_tokens": suffix, "requests": requests}
    with tempfile.TemporaryDirectory() as folder:
        init_model(shape, tokenizer, seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        for name, enabled in (("off", False), ("on", True)):
            engine = LLM(model=folder, dtype="float32", max_model_len=prefix + suffix + 16,
                         enforce_eager=True, kv_cache_memory_bytes=1 << 30, seed=seed,
                         enable_prefix_caching=enabled)
            engine.generate(prompts[:1], one, use_tqdm=False)  # fills the cache when on
            took = []
            for prompt in prompts[1:]:
                start = time.perf_counter()
                engine.generate([prompt], one, use_tqdm=False)
                took.append((time.perf_counter() - start) * 1000)
            out[f"ttft_ms_{name}"] = statistics.median(took)
            del engine
            gc.collect()
    out["ratio"] = out["ttft_ms_on"] / out["ttft_ms_off"]
    return out


SIDE_VENV = os.path.join(os.path.dirname(__file__), ".llmcompressor-venv")
SIDE_PACKAGES = ("torch==2.13.0", "llmcompressor==0.14.0.1")


def quantize_w8a8(source: str, target: str) -> None:
    """benchmarks/quantize_w8a8.py in llm-compressor's own venv (made on first use)."""
    python = os.path.join(SIDE_VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", SIDE_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *SIDE_PACKAGES], check=True)
    # -P: benchmarks/platform.py must not shadow the standard library's platform module.
    subprocess.run([python, "-P", os.path.join(os.path.dirname(__file__), "quantize_w8a8.py"),
                    source, target], check=True, stdout=subprocess.DEVNULL)


def llm_int8(root: str, hidden: int, layers: int, max_examples: int = 60,
             max_new_tokens: int = 24, seed: int = 0) -> dict:
    """vLLM on the LoRA champion merged into its base, fp32 against llm-compressor's W8A8:
    greedy answers to the adapter's held-out examples scored as jobs.evaluate_llm scores them
    (and how often the two answer alike), and decode tokens/s of a random Llama of `hidden` x
    `layers` (16 prompts of 64 tokens, 64 new tokens each) quantized the same way."""
    import gc

    import numpy as np
    import pandas as pd

    from llm.base import load_tuned, resolve
    from llm.bootstrap import LlamaShape, init_model
    from llm.evaluate import score, task_means
    from slipway.models.hf import load_tokenizer
    from slipway.registry import Registry
    from slipway.storage import Storage, local_cache

    os.environ.setdefault("VLLM_CACHE_ROOT", local_cache("vllm"))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    storage = Storage(root)
    adapter_path, mv = Registry(storage).fetch("articles_lora", "champion")
    base_path, _ = resolve(mv.metadata["base"], storage)
    tokenizer = load_tokenizer(base_path)
    test = pd.read_parquet(f"{mv.metadata['splits_uri']}/test.parquet")
    test = test.groupby("task", sort=True).head(max_examples)
    prompts = [TokensPrompt(prompt_token_ids=tokenizer(
        tokenizer.bos_token + p, add_special_tokens=False)["input_ids"]) for p in test["prompt"]]
    rng = np.random.default_rng(seed)
    timed = [TokensPrompt(prompt_token_ids=rng.integers(3, len(tokenizer), 64).tolist())
             for _ in range(16)]
    shape = LlamaShape(hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                       num_hidden_layers=layers, num_attention_heads=hidden // 64,
                       num_key_value_heads=hidden // 64, max_position_embeddings=512)

    def engine(folder: str) -> LLM:
        return LLM(model=folder, dtype="float32", max_model_len=512, enforce_eager=True,
                   kv_cache_memory_bytes=1 << 30, seed=seed)

    out: dict = {"examples": len(test), "shape": {"hidden": hidden, "layers": layers}}
    with tempfile.TemporaryDirectory() as folder:
        tuned, timing = f"{folder}/tuned", f"{folder}/random"
        load_tuned(base_path, adapter_path).merge_and_unload().save_pretrained(tuned)
        init_model(shape, tokenizer, seed=seed).save_pretrained(timing)
        for model in (tuned, timing):
            tokenizer.save_pretrained(model)
            quantize_w8a8(model, f"{model}_int8")
        for name, suffix in (("fp32", ""), ("int8", "_int8")):
            llm = engine(tuned + suffix)
            answers = [o.outputs[0].text.split("\n")[0].strip() for o in llm.generate(
                prompts, SamplingParams(max_tokens=max_new_tokens, temperature=0),
                use_tqdm=False)]
            del llm
            gc.collect()
            llm = engine(timing + suffix)
            decode = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
            llm.generate(timed[:2], decode, use_tqdm=False)  # warm up
            start = time.perf_counter()
            done = llm.generate(timed, decode, use_tqdm=False)
            seconds = time.perf_counter() - start
            del llm
            gc.collect()
            out[name] = {"metrics": task_means(score(test, answers)),
                         "tokens_per_s": sum(len(o.outputs[0].token_ids) for o in done) / seconds,
                         "answers": answers}
    out["agreement"] = float(np.mean([a == b for a, b in zip(
        out["fp32"].pop("answers"), out["int8"].pop("answers"), strict=True)]))
    out["tokens_per_s_ratio"] = out["int8"]["tokens_per_s"] / out["fp32"]["tokens_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="a platform root (default: build one, "
                        "as benchmarks/serve.py does); the man-page classifier and its variants "
                        "are added to it")
    parser.add_argument("--per-section", type=int, default=400)
    parser.add_argument("--requests", type=int, default=600, help="per served version")
    parser.add_argument("--gen-hidden", type=int, default=512)
    parser.add_argument("--gen-layers", type=int, default=8)
    parser.add_argument("--only", choices=["prefix", "sweep", "llm_int8"], default=None,
                        help="run part 4, 5 or 6 alone and update its keys in "
                             "results/optimize.json")
    opts = parser.parse_args()
    app_environment()
    root = ensure_platform(opts.root)
    if opts.only == "prefix":
        ttft = prefix_cache_ttft(root, opts.gen_hidden, opts.gen_layers, prefix=448, suffix=48)
        update_results("optimize", {"vllm_prefix_cache_ttft_ratio": ttft["ratio"],
                        "vllm_prefix_cache": ttft}, [("vLLM TTFT, prefix cache on / off", (
            f"{ttft['ttft_ms_on']:.0f} / {ttft['ttft_ms_off']:.0f} ms "
            f"({ttft['ratio']:.2f}x), {ttft['prefix_tokens']} shared + "
            f"{ttft['suffix_tokens']} own tokens"))])
        return
    if opts.only == "llm_int8":
        got = llm_int8(root, opts.gen_hidden, opts.gen_layers)
        rows = [(f"vLLM {name}", f"{got[name]['tokens_per_s']:.0f} tokens/s, " + ", ".join(
            f"{k} {v:.3f}" for k, v in got[name]["metrics"].items())) for name in ("fp32", "int8")]
        update_results("optimize", {"llm_int8": got}, [*rows, ("int8 answers equal to fp32's",
                                                    f"{got['agreement']:.3f}")])
        return
    if opts.only == "sweep":
        from slipway.data.man_pages import man_page_summaries
        from slipway.registry import Registry
        from slipway.storage import Storage

        version = Registry(Storage(root)).get(MODEL, "optimized").version
        rows = batching_sweep(root, man_page_summaries(opts.per_section)["text"].tolist(),
                              version, opts.requests)
        update_results("optimize", {"batching_sweep": rows}, [(
            f"{r['replicas']} x {r['threads']} threads, batch {r['max_batch_size']} / "
            f"{r['batch_wait_timeout_s'] * 1000:.0f} ms",
            f"{r['rps']:.0f} req/s, p99 {r['p99_ms']:.0f} ms") for r in rows])
        return
    ray.init(num_cpus=os.cpu_count(), logging_level="ERROR", log_to_driver=False)
    out, texts = train_and_optimize(root, opts.per_section)
    ray.shutdown()
    table = out.table
    chosen = out.chosen
    refs = {"fp32": int(table.loc["fp32", "version"])}
    if chosen != "fp32":
        refs[chosen] = int(table.loc[chosen, "version"])
    served = serve_rps(root, texts, refs, opts.requests)
    offline = float(table.loc[chosen, "texts_per_s_b32"])
    results = {
        "variants": {v: {k: float(table.loc[v, k]) for k in KEYS} for v in VARIANTS},
        "chosen": chosen, "isa": out.versions["onnx_int8"].metadata["settings"]["isa"],
        "serve_rps_c32": served[chosen]["rps"], "serve_p99_ms_c32": served[chosen]["p99_ms"],
        "serve_rps_c32_fp32": served["fp32"]["rps"],
        "serve_failures": sum(served[n]["failures"] for n in refs),
        "offline_texts_per_s": offline,
        "serve_vs_offline_ratio": served[chosen]["rps"] / offline,
        **{f"cache_{p}_{s}": served["cache"][p][s] for p in ("miss", "hit")
           for s in ("p50_ms", "p99_ms")},
        "settings": {"texts": len(texts), "requests_per_version": opts.requests,
                     "classifier_replicas": 1, "max_batch_size": 32},
        "env": env_info(("ray", "torch", "transformers", "onnxruntime", "onnx")),
    }
    rows = [(v, f"macro-F1 {table.loc[v, 'macro_f1']:.3f}, agree {table.loc[v, 'agreement']:.3f},"
                f" b1 p50 {table.loc[v, 'p50_ms_b1']:.1f} ms / p99 {table.loc[v, 'p99_ms_b1']:.1f}"
                f" ms, b32 {table.loc[v, 'texts_per_s_b32']:.0f} texts/s, "
                f"{table.loc[v, 'size_mb']:.0f} MB") for v in VARIANTS]
    rows += [(f"served {n} (c32)", f"{served[n]['rps']:.0f} req/s, p99 "
                                   f"{served[n]['p99_ms']:.0f} ms") for n in refs]
    rows += [("serve / offline", f"{results['serve_vs_offline_ratio']:.2f}"),
             ("cache miss / hit p50", f"{results['cache_miss_p50_ms']:.1f} / "
                                      f"{results['cache_hit_p50_ms']:.1f} ms")]
    write_results("optimize", results, rows)
    print(json.dumps({"chosen": chosen}))


if __name__ == "__main__":
    main()
