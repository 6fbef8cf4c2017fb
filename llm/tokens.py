"""Token arrays for causal-LM training (`slipway.train.trainer.to_dataset` makes Ray Datasets).

Supervised examples are `<bos> prompt ␣response <eos>` with the loss on the response only (prompt
labels are -100); the response follows the prompt after one space, so its first word is the
word-initial BPE token the model saw mid-sentence rather than loose characters. Pre-training
text is concatenated and cut into blocks with the loss on every token. Rows are right-padded to
a fixed length; the training loop trims each batch to its longest row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IGNORE = -100


def encode_examples(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
                    max_length: int) -> tuple[dict[str, np.ndarray], int]:
    """`input_ids`, `attention_mask`, `labels` (n, max_length) for the examples that fit, and
    how many did not fit (left out rather than cut, so no response is truncated)."""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer([" " + r.strip() for r in responses],
                             add_special_tokens=False)["input_ids"]
    rows = []
    for p, r in zip(prompt_ids, response_ids, strict=True):
        ids = [tokenizer.bos_token_id, *p, *r, tokenizer.eos_token_id]
        if len(ids) <= max_length:
            rows.append((ids, 1 + len(p)))
    out = {"input_ids": np.full((len(rows), max_length), tokenizer.pad_token_id, np.int64),
           "attention_mask": np.zeros((len(rows), max_length), np.int64),
           "labels": np.full((len(rows), max_length), IGNORE, np.int64)}
    for i, (ids, prompt_len) in enumerate(rows):
        out["input_ids"][i, :len(ids)] = ids
        out["attention_mask"][i, :len(ids)] = 1
        out["labels"][i, prompt_len:len(ids)] = ids[prompt_len:]
    return out, len(prompts) - len(rows)


def encode_blocks(tokenizer: Any, texts: Sequence[str], block_size: int) -> dict[str, np.ndarray]:
    """Texts joined by EOS and cut into full blocks of `block_size` tokens, loss on all."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    stream = np.fromiter((t for doc in ids for t in (*doc, tokenizer.eos_token_id)), np.int64)
    blocks = stream[: len(stream) // block_size * block_size].reshape(-1, block_size)
    return {"input_ids": blocks, "attention_mask": np.ones_like(blocks), "labels": blocks.copy()}
