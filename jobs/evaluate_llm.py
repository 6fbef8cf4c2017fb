"""Compare a fine-tuned adapter with its base on held-out instruction examples.

Both models answer the same held-out prompts (articles never trained on): perplexity of the
reference responses, exact match for topic classification, token F1 and ROUGE-L for titles,
exact match, token F1 and faithfulness to the context for RAG answers. The report (metrics of
both, the differences, example answers) is stored beside the adapter version and logged to
W&B. The adapter must beat the base on the gate metrics (perplexity and each task's main metric,
see `llm.evaluate.GATE_METRICS`; all metrics are reported): with `promote` it then becomes the
`champion`; with `require_improvement` a worse adapter fails the job (exit status 1).
"""

from __future__ import annotations

import json

import pandas as pd
from pydantic import Field

from llm.base import load_causal_lm, load_tuned, resolve
from llm.evaluate import evaluate, gate_metrics
from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.models.hf import load_tokenizer
from slipway.registry import Registry
from slipway.storage import Storage
from slipway.tracking import track_run


class EvaluateLlmConfig(JobConfig):
    """Which adapter, how many examples, and what to do with the verdict."""

    model_name: str = "articles_lora"
    ref: str | int = Field(default="challenger", description="alias or version number")
    max_examples_per_task: int = Field(default=60, ge=1)
    max_new_tokens: int = Field(default=24, ge=1, le=512)
    gate: list[str] | None = Field(default=None,
                                   description="metrics to beat the base on; default per task")
    require_improvement: bool = True
    promote: bool = True


def compare(base: dict[str, float], tuned: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per metric: base, tuned, the difference, and whether tuned is better."""
    out = {}
    for name in base:
        lower_is_better = name == "perplexity"
        delta = tuned[name] - base[name]
        out[name] = {"base": base[name], "tuned": tuned[name], "delta": delta,
                     "better": bool(delta < 0 if lower_is_better else delta > 0)}
    return out


def main(cfg: EvaluateLlmConfig) -> dict:
    """Evaluate base and tuned, store the report, promote or refuse."""
    storage = Storage(cfg.storage.root)
    registry = Registry(storage)
    with track_run("evaluate_llm", cfg, storage) as run:
        adapter_path, mv = registry.fetch(cfg.model_name, cfg.ref)
        base_path, _ = resolve(mv.metadata["base"], storage)
        test = pd.read_parquet(f"{mv.metadata['splits_uri']}/test.parquet")
        test = test.groupby("task", sort=True).head(cfg.max_examples_per_task)
        tokenizer = load_tokenizer(base_path)
        max_length = mv.metadata["max_length"]
        base_metrics, base_answers = evaluate(load_causal_lm(base_path), tokenizer, test,
                                              max_length, cfg.max_new_tokens)
        tuned_metrics, tuned_answers = evaluate(load_tuned(base_path, adapter_path), tokenizer,
                                                test, max_length, cfg.max_new_tokens)
        comparison = compare(base_metrics, tuned_metrics)
        gate = cfg.gate or gate_metrics(test["task"].unique())
        unknown = [m for m in gate if m not in comparison]
        if unknown:
            raise JobFailed(f"gate: {unknown} were not measured; measured: {list(comparison)}")
        improved = all(comparison[m]["better"] for m in gate)
        examples = pd.DataFrame({"task": test["task"].to_numpy(),
                                 "reference": test["response"].to_numpy(),
                                 "base": base_answers["answer"].to_numpy(),
                                 "tuned": tuned_answers["answer"].to_numpy()})
        report = {"model": cfg.model_name, "version": mv.version, "base": mv.metadata["base"],
                  "examples": int(len(test)), "comparison": comparison, "gate": gate,
                  "improved": improved,
                  "sample_answers": examples.groupby("task").head(3).to_dict("records")}
        uri = registry.write_file(cfg.model_name, mv.version,
                                  json.dumps(report, indent=2).encode(), "llm_evaluation.json")
        run.log({**{f"base_{k}": v for k, v in base_metrics.items()},
                 **{f"tuned_{k}": v for k, v in tuned_metrics.items()}})
        if run.wandb_run is not None:
            import wandb

            run.wandb_run.log({"answers": wandb.Table(dataframe=examples)})
    print(f"{cfg.model_name} v{mv.version} vs its base {mv.metadata['base']} on {len(test)} "
          "held-out examples:")
    print(f"  {'metric':<20}{'base':>10}{'tuned':>10}{'delta':>10}")
    for name, c in comparison.items():
        verdict = ("better" if c["better"] else "NOT better") if name in gate else ""
        print(f"  {name:<20}{c['base']:>10.3f}{c['tuned']:>10.3f}{c['delta']:>+10.3f}"
              f"   {verdict}")
    print(f"  report: {uri}")
    if improved and cfg.promote:
        registry.set_alias(cfg.model_name, "champion", mv.version, reason=run.run_id)
        print(f"{cfg.model_name} v{mv.version} is now champion")
    if not improved and cfg.require_improvement:
        worse = [m for m in gate if not comparison[m]["better"]]
        raise JobFailed(f"{cfg.model_name} v{mv.version} does not beat its base on {worse}")
    return report


if __name__ == "__main__":
    run_job(EvaluateLlmConfig, main, __doc__)
