"""A small client of the running app: wait until it is ready, and call each route once."""

from __future__ import annotations

import time

import httpx


def wait_ready(base_url: str, timeout_s: float = 300,
               answers: list[httpx.Response] | None = None) -> dict:
    """Poll `/readyz` until every deployment reports its model; raise with the last answer.
    `answers` (if given) collects every reply seen on the way."""
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(f"{base_url}/readyz", timeout=30)
            if answers is not None:
                answers.append(reply)
            if reply.status_code == 200:
                return reply.json()
            last = reply.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(1)
    raise TimeoutError(f"{base_url} not ready after {timeout_s:.0f}s: {last[:500]}")


def tour(base_url: str, key: str, question: str, texts: list[str], user_id: int,
         article_ids: list[int]) -> dict[str, dict]:
    """One request to each route; {route: answer}. Raises on any non-2xx answer."""
    headers = {"Authorization": f"Bearer {key}"}
    calls = [
        ("GET", "/healthz", None), ("GET", "/readyz", None), ("GET", "/v1/models", None),
        ("POST", "/v1/classify", {"texts": texts}),
        ("POST", "/v1/rank", {"user_id": user_id, "article_ids": article_ids}),
        ("POST", "/v1/retrieve", {"query": question, "k": 3}),
        ("POST", "/v1/rag", {"question": question, "k": 3}),
        ("POST", "/v1/completions", {"model": "articles_lora", "prompt": question,
                                     "max_tokens": 16, "temperature": 0}),
        ("POST", "/v1/chat/completions", {"model": "articles_lora", "max_tokens": 16,
                                          "messages": [{"role": "user", "content": question}]}),
        ("POST", "/v1/embeddings", {"input": texts[:2]}),
    ]
    answers = {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        for method, path, body in calls:
            reply = client.request(method, path, json=body)
            reply.raise_for_status()
            answers[path] = reply.json()
    return answers
