"""Instruction datasets from the platform's articles, and a user's own prompt/response JSONL.

Three tasks are built from articles, each a prompt and the response the model should give:

- `topic`: classify the article's topic (classification as generation; exact match scores it);
- `title`: write the title from the body (token F1 and ROUGE-L score it);
- `qa`: answer a question about the article given it as numbered context, the format the RAG
  generator sees at serving time (`rag_prompt`); the answer is a span of the context.

Articles are split into train / valid / test by article, so no held-out article's text is trained
on under any task.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from slipway.config import StrictModel
from slipway.data.tables import read_table
from slipway.errors import SlipwayError
from slipway.storage import Storage

Task = Literal["topic", "title", "qa"]
RESPONSE_MARKER = "### Response:"

# Questions whose answer is a span of one generated sentence (see slipway.data.generate).
_QUESTIONS = (
    (r"The (\w+) said the (\w+) would (\w+) the (\w+)\.", "What did the {0} say the {1} would do?",
     "{2} the {3}"),
    (r"A (\w+) (\w+) was reported on (\w+)\.", "What was reported on {2}?", "a {0} {1}"),
    (r"Experts expect the (\w+) to affect (\w+) and (\w+)\.",
     "What do experts expect the {0} to affect?", "{1} and {2}"),
    (r"(\w+) (\w+) drew attention from (\w+) (\w+)\.", "What did {0} {1} draw attention from?",
     "{2} {3}"),
    (r"Officials linked the (\w+) to (\w+) (\w+)\.", "What did officials link the {0} to?",
     "{1} {2}"),
)


class InstructionData(StrictModel):
    """Which instruction examples to build, from which articles."""

    articles: str = Field(default="curated/articles",
                          description="articles (Parquet/CSV/JSONL with article_id, title, body, "
                                      "topic); relative paths are under storage.root")
    tasks: list[Task] = Field(default_factory=lambda: ["topic", "title", "qa"])
    jsonl: str | None = Field(default=None,
                              description="your own examples: JSON lines with prompt and response")
    max_articles: int | None = Field(default=None, ge=10)
    distractors: int = Field(default=1, ge=0, le=4,
                             description="other articles added to a qa example's context")
    questions_per_article: int = Field(default=3, ge=1, description="qa examples per article")
    valid_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)


def format_texts() -> list[str]:
    """The fixed text of every prompt format, for training a tokenizer that knows them."""
    return [rag_prompt("What is it?", ["context"]), topic_prompt("Title", "Body.", ["topic"]),
            title_prompt("Body.")]


def rag_prompt(question: str, contexts: Sequence[str]) -> str:
    """The retrieval-augmented prompt: numbered context passages, then the question."""
    numbered = "\n".join(f"[{i}] {text}" for i, text in enumerate(contexts, 1))
    return ("### Instruction:\nAnswer the question using only the context.\n\n"
            f"### Context:\n{numbered}\n\n### Question:\n{question}\n\n{RESPONSE_MARKER}")


def topic_prompt(title: str, body: str, topics: Sequence[str]) -> str:
    """Topic classification as generation."""
    return (f"### Instruction:\nClassify the article's topic as one of: {', '.join(topics)}.\n\n"
            f"### Article:\n{title}\n{body}\n\n{RESPONSE_MARKER}")


def title_prompt(body: str) -> str:
    """Title generation from the body."""
    return f"### Instruction:\nWrite a title for the article.\n\n### Article:\n{body}\n\n" \
           f"{RESPONSE_MARKER}"


def questions(body: str) -> list[tuple[str, str]]:
    """(question, answer) pairs answerable from single sentences of a generated article body."""
    pairs = []
    for sentence in re.split(r"(?<=\.)\s+", body.strip()):
        for pattern, question, answer in _QUESTIONS:
            match = re.fullmatch(pattern, sentence)
            if match:
                words = [w.lower() for w in match.groups()]
                pairs.append((question.format(*words), answer.format(*words)))
                break
    return pairs


def split_articles(ids: np.ndarray, data: InstructionData, seed: int) -> dict[int, str]:
    """Article id -> `train`, `valid` or `test`, seeded."""
    order = np.random.default_rng(seed).permutation(np.unique(ids))
    n_test = max(1, int(len(order) * data.test_fraction))
    n_valid = max(1, int(len(order) * data.valid_fraction))
    names = ["test"] * n_test + ["valid"] * n_valid + ["train"] * (len(order) - n_test - n_valid)
    return dict(zip(order.tolist(), names, strict=True))


def article_examples(articles: pd.DataFrame, tasks: Sequence[str], distractors: int,
                     questions_per_article: int, seed: int) -> pd.DataFrame:
    """Instruction examples (task, prompt, response, context, article_id) from articles."""
    rng = np.random.default_rng(seed)
    topics = sorted(articles["topic"].unique())
    bodies = articles["body"].tolist()
    rows = []
    for i, art in enumerate(articles.itertuples(index=False)):
        if "topic" in tasks:
            rows.append(("topic", topic_prompt(art.title, art.body, topics), art.topic,
                         art.body, art.article_id))
        if "title" in tasks:
            rows.append(("title", title_prompt(art.body), art.title, art.body, art.article_id))
        pairs = questions(art.body) if "qa" in tasks else []
        for k in rng.permutation(len(pairs))[:questions_per_article]:
            question, answer = pairs[k]
            others = [bodies[j] for j in rng.choice(len(bodies), size=distractors + 1)
                      if j != i][:distractors]
            contexts = [art.body, *others]
            rng.shuffle(contexts)
            rows.append(("qa", rag_prompt(question, contexts), answer, "\n".join(contexts),
                         art.article_id))
    return pd.DataFrame(rows, columns=["task", "prompt", "response", "context", "article_id"])


def user_examples(path: str, storage: Storage) -> pd.DataFrame:
    """A user's prompt/response examples, task `custom`; rows missing either are refused."""
    frame = read_table(path, storage, "data.jsonl")
    missing = [c for c in ("prompt", "response") if c not in frame.columns]
    if missing:
        raise SlipwayError(f"data.jsonl: {path} has no {missing} field; each line needs "
                        f'{{"prompt": ..., "response": ...}} (it has {list(frame.columns)})')
    bad = frame["prompt"].isna() | frame["response"].isna() | \
        (frame["prompt"].astype(str).str.strip() == "")
    if bad.any():
        raise SlipwayError(f"data.jsonl: {int(bad.sum())} rows of {path} have an empty prompt or "
                        f"response (first at row {int(np.flatnonzero(bad)[0])}); fix or drop them")
    return pd.DataFrame({"task": "custom", "prompt": frame["prompt"].astype(str),
                         "response": frame["response"].astype(str), "context": "",
                         "article_id": -1 - np.arange(len(frame))})


def build(data: InstructionData, storage: Storage, seed: int) -> dict[str, pd.DataFrame]:
    """Train / valid / test instruction examples, split by article (user rows by row)."""
    parts = []
    if data.tasks:
        articles = read_table(data.articles, storage, "data.articles").sort_values("article_id")
        if data.max_articles:
            articles = articles.head(data.max_articles)
        parts.append(article_examples(articles, data.tasks, data.distractors,
                                      data.questions_per_article, seed))
    if data.jsonl:
        parts.append(user_examples(data.jsonl, storage))
    if not parts:
        raise SlipwayError("data: no examples; set data.tasks and/or data.jsonl")
    examples = pd.concat(parts, ignore_index=True)
    split = split_articles(examples["article_id"].to_numpy(), data, seed)
    examples["split"] = examples["article_id"].map(split)
    return {name: examples[examples["split"] == name].drop(columns="split")
            .reset_index(drop=True) for name in ("train", "valid", "test")}
