"""LLM building blocks on inputs whose answers are known: metrics, chunking, prompts, tokens."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from llm.bootstrap import train_tokenizer
from llm.evaluate import exact_match, faithfulness, rouge_l, token_f1
from llm.finetune import OptimSettings, load_deepspeed_json
from llm.index import IndexSettings, chunk_words, document_hash
from llm.instructions import questions, rag_prompt
from llm.tokens import IGNORE, encode_blocks, encode_examples
from slipway.config import ConfigError
from slipway.data.generate import GeneratorConfig, generate


def test_generation_metrics():
    assert exact_match("The Sports.", "sports") == 1.0
    assert exact_match("sports news", "sports") == 0.0
    assert token_f1("striker goal", "the striker goal") == 1.0
    assert token_f1("striker", "striker goal") == pytest.approx(2 / 3)
    assert token_f1("", "goal") == 0.0
    assert rouge_l("the coach behind the season", "the coach behind the season") == 1.0
    assert 0 < rouge_l("coach behind season", "the coach behind the final season") < 1
    assert faithfulness("vaccine study", "A vaccine study was reported.") == 1.0
    assert faithfulness("vaccine telescope", "A vaccine study was reported.") == 0.5
    assert faithfulness("", "anything") == 0.0


def test_metrics_read_every_script_not_only_latin_letters():
    # Before: both answers normalised to nothing, so different answers "matched" exactly.
    assert exact_match("東京です", "大阪です") == 0.0
    assert exact_match("東京です。", "東京です") == 1.0  # punctuation still ignored
    assert token_f1("東京です", "大阪です") == pytest.approx(0.5)  # で, す of 4 characters
    assert rouge_l("東京です", "大阪です") == pytest.approx(0.5)
    assert exact_match("Привет, мир!", "привет мир") == 1.0
    assert exact_match("Привет мир", "Пока мир") == 0.0
    assert faithfulness("Ωmega café", "the ΩMEGA CAFÉ opened") == 1.0


def test_chunks_cover_the_text_with_the_configured_overlap():
    words = [f"w{i}" for i in range(23)]
    chunks = chunk_words(" ".join(words), size=10, overlap=3)
    assert [c.split() for c in chunks] == [words[0:10], words[7:17], words[13:23]]
    assert chunk_words("a b c", size=10, overlap=3) == ["a b c"]
    assert chunk_words("   ", size=10, overlap=3) == []
    with pytest.raises(ValueError, match="overlap_words"):
        IndexSettings(chunk_words=8, overlap_words=8)
    assert document_hash("t", "x") != document_hash("t", "y")


def test_every_generated_article_yields_answerable_questions():
    articles = generate(GeneratorConfig(num_articles=50, num_users=1, num_events=1)).articles
    for body in articles["body"]:
        pairs = questions(body)
        assert pairs, body
        for question, answer in pairs:
            assert question.endswith("?")
            assert faithfulness(answer, body) == 1.0  # the answer is a span of the article
    prompt = rag_prompt("Why?", ["first passage", "second passage"])
    assert "[1] first passage\n[2] second passage" in prompt


def test_examples_train_on_the_response_only_and_long_ones_are_left_out():
    tokenizer = train_tokenizer(["the coach said the team would win the final"] * 20, 300)
    arrays, too_long = encode_examples(tokenizer, ["Q: who?", "x " * 200], ["coach", "y"], 32)
    assert too_long == 1 and arrays["input_ids"].shape == (1, 32)
    ids, labels, mask = arrays["input_ids"][0], arrays["labels"][0], arrays["attention_mask"][0]
    n = int(mask.sum())
    response = tokenizer(" coach", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[n - 1] == tokenizer.eos_token_id
    assert list(labels[n - 1 - len(response):n]) == [*response, tokenizer.eos_token_id]
    assert (labels[:n - 1 - len(response)] == IGNORE).all() and (labels[n:] == IGNORE).all()
    blocks = encode_blocks(tokenizer, ["the coach said"] * 10, block_size=8)
    assert blocks["input_ids"].shape[1] == 8 and np.array_equal(blocks["labels"],
                                                                blocks["input_ids"])


def test_deepspeed_configs_are_checked(tmp_path):
    for name in ("zero2", "zero3", "zero3_offload"):
        assert load_deepspeed_json(f"configs/deepspeed/{name}.json")["zero_optimization"]
    with pytest.raises(ValidationError, match="optim.deepspeed: .* does not exist"):
        OptimSettings(deepspeed=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 5}}')
    with pytest.raises(ConfigError, match="stage 5"):
        load_deepspeed_json(str(bad))
