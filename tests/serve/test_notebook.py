"""The Serve notebook against the app the serve tests run."""

from __future__ import annotations

from tests.notebooks.test_notebooks import run
from tests.serve.conftest import KEYS


def test_serve_notebook_queries_every_route(base_url, tmp_path):
    outputs = run("03_serve.ipynb", tmp_path, base_url=base_url, api_key=KEYS["tester"])
    text = "\n".join(outputs)
    assert "label" in text and "score" in text and "chunk_id" in text  # classify, rank, retrieve
    assert "article_id" in text  # the RAG answer's citations
