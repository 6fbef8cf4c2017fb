"""Loading Hugging Face tokenizers quietly: one place for the settings every loader needs."""

from __future__ import annotations

from typing import Any


def quiet_transformers() -> None:
    """No download progress bars or load reports on stdout."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def load_tokenizer(path: str, padding_side: str = "right") -> Any:
    """The tokenizer at `path` (a folder or hub id), with a pad token (the EOS token if the model
    has none) and the given padding side."""
    from transformers import AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer
