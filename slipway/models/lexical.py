"""The lexical text classifier: TF-IDF word n-grams + logistic regression (scikit-learn).

On real text with domain vocabulary it is hard to beat and trains in seconds on a CPU. It is a
model type of its own (`text.model: lexical` in `jobs.train`, registered with runtime `lexical`
and loaded by the registry like any text classifier), and `jobs.evaluate` fits it on every text
model's own training rows as the baseline shown beside the model. With an `Encoder`
(`text.model: combined`) the regression also reads the frozen encoder's sentence embeddings,
appended to the TF-IDF row (both have unit norm): lexical and semantic evidence in one model.

Saved without pickle: the vocabulary and the encoder as JSON, the IDF weights and the
regression's coefficients as NumPy arrays, so loading a version runs no code from the model
folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from slipway.registry import ModelVersion, runtime

if TYPE_CHECKING:  # scikit-learn is imported when a lexical model is fitted or loaded, not by
    # every process that imports slipway.models (about 1 s of CPU each)
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

NAME = "tfidf_lr"
NGRAMS = (1, 2)


@dataclass(frozen=True)
class Encoder:
    """The sentence encoder whose embeddings a combined model reads, and its token limit."""

    name: str
    max_length: int


class LexicalTextClassifier:
    """TF-IDF over word unigrams and bigrams (sublinear term frequency), and with an `encoder`
    the text's sentence embedding, into a multinomial logistic regression; `predict_proba` like
    every text classifier of the registry."""

    def __init__(self, vectorizer: TfidfVectorizer, coef: np.ndarray, intercept: np.ndarray,
                 encoder: Encoder | None = None) -> None:
        self.vectorizer, self.coef, self.intercept = vectorizer, coef, intercept
        self.encoder = encoder
        self._embedder = None

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], classes: int, c: float = 1.0,
            encoder: Encoder | None = None, embeddings: np.ndarray | None = None
            ) -> LexicalTextClassifier:
        """Fit on `texts` and their integer `labels` (0..classes-1; L-BFGS, deterministic),
        with `encoder`, on their `embeddings` too (one row per text). A class with no training
        row gets no probability."""
        if (encoder is None) != (embeddings is None):
            raise ValueError("a combined model needs both the encoder and the embeddings")
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        vectorizer = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True)
        x = _with_embeddings(vectorizer.fit_transform(list(texts)), embeddings)
        regression = LogisticRegression(C=c, max_iter=2000).fit(x, np.asarray(labels))
        rows, bias = regression.coef_, regression.intercept_
        if len(regression.classes_) == 2:  # one row z for two classes: softmax(-z/2, z/2)
            rows, bias = np.vstack([-rows, rows]) / 2, np.concatenate([-bias, bias]) / 2
        coef, intercept = np.zeros((classes, x.shape[1])), np.full(classes, -np.inf)
        coef[regression.classes_], intercept[regression.classes_] = rows, bias
        return cls(vectorizer, coef, intercept, encoder)

    def features(self, texts: Sequence[str], embeddings: np.ndarray | None = None
                 ) -> sp.csr_matrix:
        """The regression's input rows: TF-IDF, then (combined) the embeddings, computed here
        with the encoder unless given."""
        tfidf = self.vectorizer.transform(list(texts))
        if self.encoder is None:
            return tfidf
        if embeddings is None:
            if self._embedder is None:
                from slipway.models.text import Embedder

                self._embedder = Embedder(self.encoder.name, self.encoder.max_length)
            embeddings = self._embedder.embed(list(texts))
        return _with_embeddings(tfidf, embeddings)

    def predict_proba(self, texts: Sequence[str], embeddings: np.ndarray | None = None
                      ) -> np.ndarray:
        """(n, classes) probabilities (rows sum to 1); `embeddings` spare a combined model
        embedding `texts` itself."""
        logits = self.features(texts, embeddings) @ self.coef.T + self.intercept
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def save(self, folder: str) -> None:
        """Vocabulary, IDF weights and coefficients into `folder` (no pickle)."""
        os.makedirs(folder, exist_ok=True)
        vocabulary = {term: int(i) for term, i in self.vectorizer.vocabulary_.items()}
        with open(os.path.join(folder, "vocabulary.json"), "w") as f:
            json.dump(vocabulary, f)
        np.savez(os.path.join(folder, "weights.npz"), idf=self.vectorizer.idf_, coef=self.coef,
                 intercept=self.intercept)
        if self.encoder is not None:
            with open(os.path.join(folder, "encoder.json"), "w") as f:
                json.dump(asdict(self.encoder), f)

    @classmethod
    def load(cls, folder: str) -> LexicalTextClassifier:
        """The classifier `save` wrote to `folder`."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        with open(os.path.join(folder, "vocabulary.json")) as f:
            vocabulary = json.load(f)
        encoder = None
        if os.path.exists(os.path.join(folder, "encoder.json")):
            with open(os.path.join(folder, "encoder.json")) as f:
                encoder = Encoder(**json.load(f))
        with np.load(os.path.join(folder, "weights.npz"), allow_pickle=False) as weights:
            vectorizer = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True,
                                         vocabulary=vocabulary)
            vectorizer.idf_ = weights["idf"]
            return cls(vectorizer, weights["coef"], weights["intercept"], encoder)


def _with_embeddings(tfidf: sp.csr_matrix, embeddings: np.ndarray | None) -> sp.csr_matrix:
    """TF-IDF rows with the embeddings' columns appended (none: the TF-IDF rows)."""
    if embeddings is None:
        return tfidf
    import scipy.sparse as sp

    return sp.hstack([tfidf, sp.csr_matrix(np.asarray(embeddings, np.float64))], format="csr")


@runtime("lexical")
def load_lexical(folder: str, mv: ModelVersion) -> LexicalTextClassifier:
    """The registry's loader for lexical text classifiers."""
    return LexicalTextClassifier.load(folder)
