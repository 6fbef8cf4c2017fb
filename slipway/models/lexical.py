"""The lexical text classifier: TF-IDF word n-grams + logistic regression (scikit-learn).

On real text with domain vocabulary it is hard to beat and trains in seconds on a CPU. It is a
model type of its own (`text.model: lexical` in `jobs.train`, registered with runtime `lexical`
and loaded by the registry like any text classifier), and `jobs.evaluate` fits it on every text
model's own training rows as the baseline shown beside the model.

Saved without pickle: the vocabulary as JSON, the IDF weights and the regression's coefficients
as NumPy arrays, so loading a version runs no code from the model folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from slipway.registry import ModelVersion, runtime

NAME = "tfidf_lr"
NGRAMS = (1, 2)


class LexicalTextClassifier:
    """TF-IDF over word unigrams and bigrams (sublinear term frequency) into a multinomial
    logistic regression; `predict_proba` like every text classifier of the registry."""

    def __init__(self, vectorizer: TfidfVectorizer, coef: np.ndarray, intercept: np.ndarray
                 ) -> None:
        self.vectorizer, self.coef, self.intercept = vectorizer, coef, intercept

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], classes: int,
            c: float = 1.0) -> LexicalTextClassifier:
        """Fit on `texts` and their integer `labels` (0..classes-1; L-BFGS, deterministic). A
        class with no training row gets no probability."""
        vectorizer = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True)
        x = vectorizer.fit_transform(list(texts))
        regression = LogisticRegression(C=c, max_iter=2000).fit(x, np.asarray(labels))
        rows, bias = regression.coef_, regression.intercept_
        if len(regression.classes_) == 2:  # one row z for two classes: softmax(-z/2, z/2)
            rows, bias = np.vstack([-rows, rows]) / 2, np.concatenate([-bias, bias]) / 2
        coef, intercept = np.zeros((classes, x.shape[1])), np.full(classes, -np.inf)
        coef[regression.classes_], intercept[regression.classes_] = rows, bias
        return cls(vectorizer, coef, intercept)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, classes) probabilities (rows sum to 1)."""
        logits = self.vectorizer.transform(list(texts)) @ self.coef.T + self.intercept
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

    @classmethod
    def load(cls, folder: str) -> LexicalTextClassifier:
        """The classifier `save` wrote to `folder`."""
        with open(os.path.join(folder, "vocabulary.json")) as f:
            vocabulary = json.load(f)
        with np.load(os.path.join(folder, "weights.npz"), allow_pickle=False) as weights:
            vectorizer = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True,
                                         vocabulary=vocabulary)
            vectorizer.idf_ = weights["idf"]
            return cls(vectorizer, weights["coef"], weights["intercept"])


@runtime("lexical")
def load_lexical(folder: str, mv: ModelVersion) -> LexicalTextClassifier:
    """The registry's loader for lexical text classifiers."""
    return LexicalTextClassifier.load(folder)
