"""Evaluating generative output: perplexity, exact match, token F1, ROUGE-L and faithfulness.

- `perplexity` of the reference responses given the prompts (lower is better);
- `exact_match`: the answer equals the reference after normalisation (classification prompts);
- `token_f1`: SQuAD-style overlap of answer and reference tokens (titles, answers);
- `rouge_l`: longest-common-subsequence F-measure (Google's `rouge-score`);
- `faithfulness`: the share of answer tokens found in the context it was given, a measurable
  proxy for "says only what the context supports" in RAG answers.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from llm.tokens import IGNORE, encode_examples

# Metrics per task; every one of them is higher-is-better except perplexity.
TASK_METRICS = {"topic": ("exact_match",), "title": ("token_f1", "rouge_l"),
                "qa": ("exact_match", "token_f1", "faithfulness"),
                "custom": ("exact_match", "token_f1", "rouge_l")}
# What a tuned model must improve on (with perplexity) to count as better than its base.
GATE_METRICS = {"topic": ("exact_match",), "title": ("rouge_l",),
                "qa": ("token_f1", "faithfulness"), "custom": ("token_f1",)}


def gate_metrics(tasks: Sequence[str]) -> list[str]:
    """Perplexity and the main metrics of the tasks present."""
    return ["perplexity", *(f"{t}_{m}" for t in sorted(set(tasks)) for m in GATE_METRICS[t])]


# One token per CJK character (those scripts put no spaces between words), else runs of Unicode
# letters and digits in any script.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


def tokens(text: str) -> list[str]:
    """Case-folded word tokens of any script, CJK by character, without punctuation."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def normalize(text: str) -> list[str]:
    """`tokens` without the English articles (for exact match, token F1 and faithfulness)."""
    return [w for w in tokens(text) if w not in ("a", "an", "the")]


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the normalised answer equals the normalised reference."""
    return float(normalize(answer) == normalize(reference))


def token_f1(answer: str, reference: str) -> float:
    """Harmonic mean of token precision and recall against the reference."""
    a, r = normalize(answer), normalize(reference)
    common = sum((Counter(a) & Counter(r)).values())
    if not a or not r or not common:
        return float(a == r)
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    class Tokenizer:  # rouge-score's own tokenizer keeps only [a-z0-9]
        def tokenize(self, text: str) -> list[str]:
            return tokens(text)

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=Tokenizer())


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure."""
    return _rouge_scorer().score(reference, answer)["rougeL"].fmeasure


def faithfulness(answer: str, context: str) -> float:
    """Share of the answer's tokens that appear in the context (0 for an empty answer)."""
    a, c = normalize(answer), set(normalize(context))
    return sum(w in c for w in a) / len(a) if a else 0.0


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str],
             max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
    """Greedy completions of `prompts`, cut at the first newline or end of sequence."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [tokenizer.bos_token + p for p in prompts[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            new = ids[:, batch["input_ids"].shape[1]:]
            out += [t.split("\n")[0].strip()
                    for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return out


@torch.no_grad()
def perplexity(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str],
               responses: Sequence[str], max_length: int, batch_size: int = 16) -> float:
    """Perplexity of the responses given the prompts (response tokens only)."""
    arrays, _ = encode_examples(tokenizer, prompts, responses, max_length)
    total, count = 0.0, 0
    for start in range(0, len(arrays["input_ids"]), batch_size):
        batch = {k: torch.from_numpy(v[start:start + batch_size]) for k, v in arrays.items()}
        tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += model(**batch).loss.item() * tokens
        count += tokens
    return math.exp(total / max(count, 1))


def score(examples: pd.DataFrame, answers: Sequence[str]) -> pd.DataFrame:
    """Per-example metrics for the task of each row."""
    rows = []
    for ex, answer in zip(examples.itertuples(index=False), answers, strict=True):
        values = {"exact_match": exact_match(answer, ex.response),
                  "token_f1": token_f1(answer, ex.response),
                  "rouge_l": rouge_l(answer, ex.response),
                  "faithfulness": faithfulness(answer, ex.context)}
        rows.append({"task": ex.task, "answer": answer,
                     **{k: values[k] for k in TASK_METRICS[ex.task]}})
    return pd.DataFrame(rows)


def evaluate(model: torch.nn.Module, tokenizer: Any, examples: pd.DataFrame, max_length: int,
             max_new_tokens: int = 32) -> tuple[dict[str, float], pd.DataFrame]:
    """`<task>_<metric>` means over the examples plus the overall `perplexity`, and the
    per-example answers and scores."""
    model.eval()
    answers = generate(model, tokenizer, examples["prompt"].tolist(), max_new_tokens)
    scored = score(examples, answers)
    metrics = {"perplexity": perplexity(model, tokenizer, examples["prompt"].tolist(),
                                        examples["response"].tolist(), max_length),
               **task_means(scored)}
    return metrics, scored


def task_means(scored: pd.DataFrame) -> dict[str, float]:
    """`<task>_<metric>`: the mean of each task's metrics over its rows of `score`'s frame."""
    return {f"{task}_{name}": float(np.mean(part[name]))
            for task, part in scored.groupby("task") for name in TASK_METRICS[task]}
