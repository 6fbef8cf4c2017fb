"""The offline default base model: a BPE tokenizer and a small Llama trained from scratch.

No small generative model ships in a PyPI package, and nothing may come from the hub at run
time, so the default base is built here: a byte-level BPE tokenizer trained on the corpus with
the `tokenizers` library, a Llama-architecture model initialised from `LlamaShape`, then
pre-trained on the corpus by the same DeepSpeed loop that fine-tunes (full weights, no LoRA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from llm.instructions import format_texts
from slipway.config import StrictModel
from slipway.data.generate import GeneratorConfig, generate
from slipway.data.tables import read_table
from slipway.storage import Storage

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


class LlamaShape(StrictModel):
    """Size of the model (a `transformers.LlamaConfig`) and of its tokenizer's vocabulary."""

    vocab_size: int = Field(default=2048, ge=300)
    hidden_size: int = Field(default=128, ge=16)
    intermediate_size: int = Field(default=384, ge=16)
    num_hidden_layers: int = Field(default=4, ge=1)
    num_attention_heads: int = Field(default=4, ge=1)
    num_key_value_heads: int = Field(default=4, ge=1)
    max_position_embeddings: int = Field(default=512, ge=64)


class Corpus(StrictModel):
    """Pre-training text: generated articles, or a table with a text column."""

    source: Literal["generated", "table"] = "generated"
    num_articles: int = Field(default=8000, ge=10, description="generated articles")
    seed: int = 7
    path: str | None = Field(default=None, description="table with text (source: table)")
    text_column: str = "text"


def corpus_texts(corpus: Corpus, storage: Storage) -> list[str]:
    """The documents to pre-train on."""
    if corpus.source == "generated":
        world = generate(GeneratorConfig(seed=corpus.seed, num_articles=corpus.num_articles,
                                         num_users=1, num_events=1))
        return article_texts(world.articles)
    if not corpus.path:
        raise ValueError("corpus.path: required with corpus.source: table")
    frame = read_table(corpus.path, storage, "corpus.path")
    if corpus.text_column not in frame.columns:
        raise ValueError(f"corpus.text_column: {corpus.text_column!r} is not a column of "
                         f"{corpus.path} (columns: {list(frame.columns)})")
    return frame[corpus.text_column].dropna().astype(str).tolist()


def article_texts(articles: pd.DataFrame) -> list[str]:
    """One document per article as a news page shows it: section, title, body."""
    return ("Section: " + articles["topic"] + "\n" + articles["title"] + "\n"
            + articles["body"]).tolist()


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `texts` and the platform's prompt formats (any
    text encodes: bytes are the base)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([*texts, *format_texts()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def init_model(shape: LlamaShape, tokenizer: Any, seed: int) -> torch.nn.Module:
    """A randomly initialised Llama of `shape` for `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**shape.model_dump(exclude={"vocab_size"}), vocab_size=len(tokenizer),
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def split_documents(texts: list[str], valid_fraction: float, seed: int
                    ) -> tuple[list[str], list[str]]:
    """Documents for training and for validation, seeded."""
    order = np.random.default_rng(seed).permutation(len(texts))
    n_valid = max(1, int(len(texts) * valid_fraction))
    return [texts[i] for i in order[n_valid:]], [texts[i] for i in order[:n_valid]]
