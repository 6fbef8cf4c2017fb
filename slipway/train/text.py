"""The text classification task: any labelled text (article topics, a user's CSV) to a classifier.

Rows are read with Ray Data from a CSV, JSON-lines or Parquet file or folder; the text is one or
more columns joined, the label another. The split is stratified and seeded. With the encoder
frozen, a pool of Ray actors embeds the text once and only the head trains; with
`train_encoder`, token ids go to the workers and the encoder trains too (data-parallel, at its own
learning rate, with warmup and linear decay, stopped early on validation macro-F1). Unless
`max_length` is set, texts keep the 95th percentile of the training texts' token counts. `model:
lexical` fits TF-IDF + logistic regression on the same split instead, in one Ray task; `model:
combined` fits it on TF-IDF and the frozen encoder's embeddings (from the same actor pool).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import ray
from pydantic import Field, model_validator
from sklearn.model_selection import train_test_split

from slipway.config import StrictModel
from slipway.data.tables import locate, read_table
from slipway.errors import SlipwayError
from slipway.labeling import label_sets
from slipway.models.hf import load_tokenizer
from slipway.models.lexical import Encoder, LexicalTextClassifier
from slipway.models.text import DEFAULT_ENCODER, Embedder, TextClassifier, encoder_path, tokenize
from slipway.storage import Storage
from slipway.train.loop import valid_metrics
from slipway.train.trainer import Prepared, to_dataset

LENGTH_BUCKETS = ((8, "short"), (30, "medium"), (np.inf, "long"))
Candidate = Literal["lexical", "frozen_encoder", "tuned_encoder", "combined"]


class TextData(StrictModel):
    """Labelled text and the encoder."""

    path: str = Field(default="curated/articles",
                      description="CSV, JSON-lines or Parquet file or folder; relative paths are "
                                  "under storage.root")
    text_columns: list[str] = Field(default_factory=lambda: ["title"], min_length=1)
    label_column: str = "topic"
    encoder: str = Field(default=DEFAULT_ENCODER,
                         description="all-MiniLM-L6-v2 (packaged), a local directory or a hub id")
    model: Literal["encoder", "lexical", "combined"] = Field(
        default="encoder",
        description="encoder: the encoder (frozen or trained) and a head, by Ray Train; "
                    "lexical: TF-IDF word 1-2-grams + logistic regression (no encoder); "
                    "combined: that regression on TF-IDF and the frozen encoder's embeddings")
    lexical_c: float = Field(default=1.0, gt=0,
                             description="inverse L2 strength of the lexical model")
    train_encoder: bool = False
    encoder_lr: float = Field(default=5e-5, gt=0, description="the encoder's learning rate when "
                              "it trains (the head's is model.lr)")
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1, description="share of the steps over "
                                   "which the learning rates rise when the encoder trains")
    patience: int | None = Field(default=2, ge=1, description="when the encoder trains, stop after "
                                 "this many epochs without a better validation macro-F1 (None: "
                                 "train every epoch); the best epoch is registered")
    max_length: int | None = Field(default=None, ge=8, le=512, description="tokens kept per text; "
                                   "None: the 95th percentile of the training texts' counts")
    embed_actors: int = Field(default=2, ge=1, description="Ray actors embedding the text")
    max_examples: int | None = Field(default=None, ge=10)
    candidates: list[Candidate] | None = Field(
        default=None, min_length=2, description="train each on the same split (setting model "
        "and train_encoder), register each, and make the best on validation macro-F1 the "
        "challenger")
    label_set: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]+(@[0-9]+)?$",
        description="train on a labeling project's label set: `project` (its latest version) or "
                    "`project@N`; sets path, text_columns and label_column")

    @model_validator(mode="after")
    def _encoder_to_train(self) -> TextData:
        if self.train_encoder and self.model != "encoder":
            raise ValueError(f"train_encoder: true fine-tunes the encoder of model: encoder; "
                             f"model: {self.model} trains no encoder: drop train_encoder or set "
                             "model: encoder")
        return self


def resolve(data: TextData, storage: Storage) -> TextData:
    """`data` with a `label_set` turned into the path of that version's labels (the version
    number is in the path, so it lands in the model's lineage)."""
    if data.label_set is None:
        return data
    project, _, number = data.label_set.partition("@")
    manifest = label_sets.read(storage, project, int(number) if number else None)[1]
    return data.model_copy(update={
        "path": label_sets.labels_path(project, manifest["version"]),
        "text_columns": ["text"], "label_column": "label"})


def length_bucket(texts: pd.Series) -> pd.Series:
    """`short`, `medium` or `long` by word count: a slice for evaluation."""
    words = texts.str.split().str.len()
    return pd.cut(words, [-1, *(b for b, _ in LENGTH_BUCKETS)],
                  labels=[n for _, n in LENGTH_BUCKETS]).astype(str)


def _read(data: TextData, storage: Storage) -> pd.DataFrame:
    frame = read_table(data.path, storage, "text.path")
    wanted = [*data.text_columns, data.label_column]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise SlipwayError(f"text columns {missing} are not in {data.path}; its columns are "
                        f"{list(frame.columns)}: set text.text_columns / text.label_column")
    return frame


def load_labelled(data: TextData, storage: Storage, seed: int) -> pd.DataFrame:
    """Columns `text`, `label_name`, `label` (class index) and `length`; unlabelled rows and
    empty texts are left out and counted in the message printed."""
    frame = _read(data, storage)
    text = frame[data.text_columns].astype("string").fillna("").agg(". ".join, axis=1)
    out = pd.DataFrame({"text": text.str.strip(),
                        "label_name": frame[data.label_column].astype("string").str.strip()})
    usable = (out["label_name"].fillna("").str.len() > 0) & (out["text"].str.len() > 0)
    if (~usable).sum():
        print(f"text: {(~usable).sum():,} of {len(out):,} rows have no label or no text and "
              "are not used")
    out = out[usable].reset_index(drop=True)
    if data.max_examples and len(out) > data.max_examples:
        out = out.sample(data.max_examples, random_state=seed).reset_index(drop=True)
    names = sorted(out["label_name"].unique())
    if len(names) < 2:
        raise SlipwayError(f"text.label_column {data.label_column!r} has {len(names)} class(es); "
                        "a classifier needs at least two")
    out["label"] = out["label_name"].map({n: i for i, n in enumerate(names)}).astype("int64")
    out["length"] = length_bucket(out["text"])
    return out


def stratified_split(df: pd.DataFrame, valid: float, test: float, seed: int
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / validation / test with every class in the same proportion in each."""
    counts = df["label_name"].value_counts()
    small = counts[counts < 3]
    if len(small):
        raise SlipwayError(f"classes {small.to_dict()} have fewer than 3 examples; a stratified "
                        "train/valid/test split needs at least 3 per class: add examples or "
                        "drop those classes")
    try:
        rest, test_df = train_test_split(df, test_size=test, stratify=df["label"],
                                         random_state=seed)
        train, valid_df = train_test_split(rest, test_size=valid / (1 - test),
                                           stratify=rest["label"], random_state=seed)
    except ValueError as exc:
        raise SlipwayError(f"cannot split {len(df)} examples by class: {exc}; add examples or "
                        "lower valid_fraction/test_fraction") from None
    return (train.reset_index(drop=True), valid_df.reset_index(drop=True),
            test_df.reset_index(drop=True))


def _inputs(data: TextData, texts: pd.Series) -> dict[str, np.ndarray]:
    """Token ids (encoder trained) or embeddings from one pass of an actor pool (frozen)."""
    if data.train_encoder:
        return tokenize(load_tokenizer(encoder_path(data.encoder)), texts.tolist(), data.max_length)
    return {"x": _embed(data.encoder, data.max_length, data.embed_actors, tuple(texts))}


@functools.lru_cache(maxsize=1)
def _embed(encoder: str, max_length: int, actors: int, texts: tuple[str, ...]) -> np.ndarray:
    """The texts' sentence embeddings, in order, from one pass of a pool of `actors` Ray actors.
    The last result is kept: the frozen-encoder and combined candidates of one split (and
    their shared validation rows) embed once."""
    frame = pd.DataFrame({"text": texts, "row": np.arange(len(texts))})
    embedded = ray.data.from_pandas(frame).map_batches(
        Embedder, fn_constructor_kwargs={"encoder": encoder, "max_length": max_length},
        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=64, batch_format="numpy")
    # Actor pools may return batches out of order: put rows back in input order.
    x = np.stack(embedded.to_pandas().sort_values("row")["x"].to_numpy())
    x.flags.writeable = False  # shared by the callers the cache answers
    return x


@dataclass
class TextSplits:
    """Labelled text split by class, its label names and where it came from."""

    data: TextData
    splits: dict[str, pd.DataFrame]
    names: list[str]
    data_versions: dict[str, str]


def split_text(data: TextData, storage: Storage, seed: int, valid: float, test: float
               ) -> TextSplits:
    """Read the labelled text (`label_set` resolved) and split it by class."""
    data = resolve(data, storage)
    examples = load_labelled(data, storage, seed)
    where, parts = locate(data.path, storage)
    train, valid_df, test_df = stratified_split(examples, valid, test, seed)
    return TextSplits(data, {"train": train, "valid": valid_df, "test": test_df},
                      sorted(examples["label_name"].unique()),
                      {data.path: where.version(*parts)})


def token_length(encoder: str, texts: pd.Series, percentile: float = 95) -> int:
    """`percentile` of the texts' token counts (special tokens included), rounded up to a
    multiple of 8, from 16 to 512."""
    tokenizer = load_tokenizer(encoder_path(encoder))
    counts = [len(ids) for ids in tokenizer(texts.tolist(), truncation=False)["input_ids"]]
    return int(min(512, max(16, 8 * math.ceil(np.percentile(counts, percentile) / 8))))


def with_max_length(data: TextData, train: pd.DataFrame) -> TextData:
    """`data` with `max_length` chosen from the training texts unless set."""
    if data.max_length is not None:
        return data
    data = data.model_copy(update={"max_length": token_length(data.encoder, train["text"])})
    print(f"text: max_length {data.max_length} (95% of the training texts fit)")
    return data


def prepare(data: TextData, storage: Storage, seed: int, valid: float, test: float
            ) -> Prepared:
    """Labelled text, split by class, as embeddings (frozen encoder) or token ids."""
    text = split_text(data, storage, seed, valid, test)
    names = text.names
    train, valid_df = text.splits["train"], text.splits["valid"]
    data = with_max_length(text.data, train)
    # Embed (or tokenize) train and valid together: one actor pool, the encoder loaded once.
    inputs_all = _inputs(data, pd.concat([train["text"], valid_df["text"]], ignore_index=True))
    inputs = ["input_ids", "attention_mask"] if data.train_encoder else ["x"]
    return Prepared(
        task="text", model_cls=TextClassifier,
        arch_params={"encoder": data.encoder, "num_classes": len(names),
                     "train_encoder": data.train_encoder, "max_length": data.max_length},
        inputs=inputs,
        datasets={"train": to_dataset({**{k: v[:len(train)] for k, v in inputs_all.items()},
                                       "y": train["label"].to_numpy()}),
                  "valid": to_dataset({**{k: v[len(train):] for k, v in inputs_all.items()},
                                       "y": valid_df["label"].to_numpy()})},
        splits=text.splits,
        metadata={"labels": names, "encoder": data.encoder,
                  "text": data.model_dump(include={"text_columns", "label_column",
                                                   "max_length"})},
        data_versions=text.data_versions,
        loop={"encoder_lr": data.encoder_lr, "warmup_fraction": data.warmup_fraction,
              "patience": data.patience, "train_rows": len(train)} if data.train_encoder else {},
    )


@ray.remote(num_cpus=1)
def _fit_lexical(texts: list[str], labels: np.ndarray, classes: int, c: float,
                 encoder: Encoder | None, embeddings: np.ndarray | None
                 ) -> LexicalTextClassifier:
    return LexicalTextClassifier.fit(texts, labels, classes, c, encoder, embeddings)


def train_lexical(text: TextSplits) -> tuple[LexicalTextClassifier, dict[str, float]]:
    """The lexical (or combined) model fitted on the training split in a Ray task (one CPU of
    the cluster), and its validation metrics. A combined model's training and validation
    embeddings come from one pass of the embedding actor pool."""
    train, valid = text.splits["train"], text.splits["valid"]
    encoder = embeddings = None
    if text.data.model == "combined":
        data = with_max_length(text.data, train)
        encoder = Encoder(data.encoder, data.max_length)
        embeddings = _inputs(data, pd.concat([train["text"], valid["text"]],
                                             ignore_index=True))["x"]
    model = ray.get(_fit_lexical.remote(
        train["text"].tolist(), train["label"].to_numpy(), len(text.names), text.data.lexical_c,
        encoder, None if embeddings is None else embeddings[:len(train)]))
    proba = model.predict_proba(
        valid["text"], None if embeddings is None else embeddings[len(train):])
    return model, valid_metrics(valid["label"].to_numpy(), proba)
