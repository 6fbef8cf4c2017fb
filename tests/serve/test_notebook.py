"""The Serve notebook against the app the serve tests run."""

from __future__ import annotations

from tests.notebooks.test_notebooks import run
from tests.serve.conftest import KEYS


def test_serve_notebook_queries_every_route(api, base_url, tmp_path):
    outputs, summary = run("03_serve.ipynb", tmp_path, base_url=base_url, api_key=KEYS["tester"])
    text = "\n".join(outputs)
    assert "label" in text and "score" in text and "chunk_id" in text  # classify, rank, retrieve
    # The notebook's RAG answer is the app's (greedy decoding): the same answer and citations.
    rag = api.post("/v1/rag", json={"question": "What happened in the markets?",
                                    "max_tokens": 32}).json()
    assert summary["answer"] == rag["answer"]
    assert summary["cited_chunks"] == [c["chunk_id"] for c in rag["citations"]]
