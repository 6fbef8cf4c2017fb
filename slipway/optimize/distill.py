"""A distilled text classifier: a student encoder with fewer layers, initialised from the
teacher's (evenly spaced, first and last kept), trained to reproduce the teacher's sentence
embeddings (mean squared error) on unlabelled text, then the head retrained on labelled rows."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import f1_score

from slipway.models.text import TextClassifier, tokenize


def kept_layers(teacher_layers: int, layers: int) -> list[int]:
    """Indices of the teacher layers a student of `layers` layers starts from."""
    return sorted({round(i) for i in np.linspace(0, teacher_layers - 1, layers)})


def make_student(teacher: TextClassifier, layers: int) -> TextClassifier:
    """A copy of `teacher` whose encoder keeps `layers` of its layers (the teacher's weights)."""
    total = len(teacher.encoder.encoder.layer)
    if not 0 < layers < total:
        raise ValueError(f"distill.layers={layers}: the teacher has {total} encoder layers; "
                         f"choose 1 to {total - 1}")
    student = copy.deepcopy(teacher)
    student.keep_layers(kept_layers(total, layers))
    return student


def _batches(tokenizer, texts: Sequence[str], max_length: int, size: int):
    for start in range(0, len(texts), size):
        tokens = tokenize(tokenizer, list(texts[start:start + size]), max_length, fixed=False)
        yield start, {k: torch.from_numpy(v) for k, v in tokens.items()}


@torch.no_grad()
def embed(model: TextClassifier, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """Sentence embeddings of `texts` by `model`'s encoder."""
    model.eval()
    return torch.cat([model.embed(**tokens) for _, tokens in
                      _batches(model.tokenizer, texts, model.max_length, batch_size)])


def distill(student: TextClassifier, teacher: TextClassifier, texts: Sequence[str],
            epochs: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """Train the student's encoder to match the teacher's embeddings of `texts`; the mean
    squared error of each epoch."""
    target = embed(teacher, texts)
    params = list(student.encoder.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr)
    generator = np.random.default_rng(seed)
    history = []
    for _ in range(epochs):
        student.train()
        order = generator.permutation(len(texts))
        shuffled = [texts[i] for i in order]
        total = 0.0
        for start, tokens in _batches(student.tokenizer, shuffled, student.max_length, batch_size):
            loss = torch.nn.functional.mse_loss(
                student.embed(**tokens), target[order[start:start + batch_size]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(tokens["input_ids"])
        history.append(total / len(texts))
    student.encoder.requires_grad_(False)
    return history


def fit_head(student: TextClassifier, train: tuple[Sequence[str], np.ndarray],
             valid: tuple[Sequence[str], np.ndarray], epochs: int, batch_size: int, lr: float,
             seed: int) -> float:
    """Retrain the student's head (from the teacher's) on its own embeddings of the training
    rows, keeping the epoch with the best validation macro-F1; that macro-F1."""
    torch.manual_seed(seed)
    x_train, x_valid = embed(student, train[0]), embed(student, valid[0])
    y_train = torch.as_tensor(np.asarray(train[1]), dtype=torch.long)
    optimizer = torch.optim.Adam(student.head.parameters(), lr=lr)

    def valid_f1() -> float:
        student.head.eval()
        with torch.no_grad():
            pred = student.head(x_valid).argmax(1).numpy()
        return float(f1_score(valid[1], pred, average="macro"))

    best, best_state = valid_f1(), copy.deepcopy(student.head.state_dict())
    for _ in range(epochs):
        student.head.train()
        for idx in torch.randperm(len(y_train)).split(batch_size):
            loss = torch.nn.functional.cross_entropy(student.head(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = valid_f1()
        if score > best:
            best, best_state = score, copy.deepcopy(student.head.state_dict())
    student.head.load_state_dict(best_state)
    student.eval()
    return best
