"""The HTTP API: a FastAPI ingress composing the classifier, ranker, retriever and generator.

Every `/v1` route checks the bearer API key and its rate first, validates the body (4xx naming
the field), calls the deployments through their handles, logs the prediction and counts it in
the route metrics. `/healthz` and `/readyz` need no key; OpenAPI docs are at `/docs`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayError, RayTaskError
from ray.serve.exceptions import RayServeException, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.util.metrics import Counter
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm.evaluate import faithfulness
from llm.instructions import rag_prompt
from serve_apps.auth import Gate
from serve_apps.body_limit import BodyLimit
from serve_apps.errors import RequestError, error_response
from serve_apps.experiments import Experiments, Exposure
from serve_apps.metrics import RouteMetrics
from serve_apps.prediction_log import PredictionLog, event_log
from serve_apps.schemas import (
    ChatRequest,
    ClassifyRequest,
    ClassifyResponse,
    CompletionRequest,
    Context,
    EmbeddingRequest,
    Event,
    EventsRequest,
    EventsResponse,
    RagRequest,
    RagResponse,
    RankRequest,
    RankResponse,
    RetrieveRequest,
    RetrieveResponse,
)
from serve_apps.settings import AppSettings
from slipway.storage import Storage
from slipway.streaming.events import StreamEvent
from slipway.streaming.stream import AsyncPublisher

app = FastAPI(title="Slipway", version="0.1.0",
              description="Classification, ranking, retrieval, RAG and OpenAI-compatible "
                          "generation. `/v1` routes need `Authorization: Bearer <key>`.")
READY_TIMEOUT_S = 5.0
logger = logging.getLogger("ray.serve")
ROUTES = ("/v1/classify", "/v1/rank", "/v1/events", "/v1/retrieve", "/v1/rag", "/v1/completions",
          "/v1/chat/completions", "/v1/embeddings", "/v1/models", "/healthz", "/readyz")


app.add_middleware(BodyLimit)
PARSE_FAILED = "There was an error parsing the body"  # FastAPI's words for an unreadable body


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = [{"field": ".".join(str(p) for p in e["loc"] if p != "body") or "body",
               "problem": e["msg"]} for e in exc.errors()]
    message = "; ".join(f"{f['field']}: {f['problem']}" for f in fields)
    return error_response(422, f"invalid request: {message}", fields=fields)


@app.exception_handler(StarletteHTTPException)  # FastAPI's and Starlette's own (404, 405)
async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = str(exc.detail)
    if message == PARSE_FAILED:
        message = ("the body could not be parsed (malformed, or JSON nested too deeply); "
                   "send one JSON object as /docs shows")
    return error_response(exc.status_code, message, headers=exc.headers)


@app.exception_handler(RequestError)
async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
    return error_response(exc.status, exc.message)


@app.exception_handler(RayError)
@app.exception_handler(RayServeException)
async def _ray_error(request: Request, exc: Exception) -> JSONResponse:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RequestError):  # a bad request, found by a model deployment
        return error_response(cause.status, cause.message)
    # A replica that died, is restarting or is overloaded: the client may retry.
    return error_response(503, f"service unavailable ({type(exc).__name__}); retry shortly",
                  "server_error", {"Retry-After": "1"})


@app.middleware("http")
async def _observe(request: Request, call_next):
    # Serve's proxy puts the request id (the client's X-Request-ID, or a new one) in the
    # request headers and echoes it in the response; the prediction log uses the same id.
    request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    start = time.perf_counter()
    response = await call_next(request)
    route = request.url.path if request.url.path in ROUTES else "other"
    request.app.state.metrics.observe(route, getattr(request.state, "model", ""),
                                      response.status_code,
                                      (time.perf_counter() - start) * 1000)
    return response


# A replica that died, is stopping or cannot be reached: the same call on another replica can
# succeed. Only the idempotent model calls (classify, rank, retrieve, embed) are retried.
REPLICA_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError)
RETRY_DELAYS_S = (0.05, 0.25, 1.0)


async def call_with_retry(method: Any, *args: Any) -> Any:
    """`await method.remote(*args)`, again on a live replica after a replica was lost."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return await method.remote(*args)
        except REPLICA_GONE:
            if delay is None:
                raise
            await asyncio.sleep(delay)


def no_cache(request: Request) -> bool:
    """Whether the client asked for a fresh answer (`Cache-Control: no-cache` or `no-store`)."""
    directives = request.headers.get("cache-control", "").lower().replace(" ", "").split(",")
    return bool({"no-cache", "no-store"} & set(directives))


def authorize(request: Request) -> str:
    """Dependency of every /v1 route: the API key's name (raises 401/403/429)."""
    request.state.api_key = request.app.state.gate.check(request.headers.get("authorization"))
    return request.state.api_key


V1 = {"dependencies": [Depends(authorize)]}


def _sse(first: dict, rest: AsyncIterator[dict]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        yield f"data: {json.dumps(first)}\n\n"
        async for item in rest:
            yield f"data: {json.dumps(item)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@serve.deployment(max_ongoing_requests=200, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(app)
class Ingress:
    """Routes requests to the model deployments."""

    def __init__(self, classifier: DeploymentHandle, ranker: DeploymentHandle,
                 retriever: DeploymentHandle, generator: DeploymentHandle,
                 settings: dict) -> None:
        self.settings = AppSettings(**settings)
        self.classifier, self.ranker, self.retriever = classifier, ranker, retriever
        self.generator = generator
        storage = Storage(self.settings.storage_root)
        self.log = PredictionLog(storage, self.settings.logging)
        self.events = event_log(storage, self.settings.logging)
        self.stream = AsyncPublisher(self.settings.stream) if self.settings.stream else None
        self.stream_failures = Counter(
            "slipway_stream_publish_failures_total", "events not published to the stream "
            "(they are still in the event log)")
        self.experiments = Experiments(storage, self.settings.follow_interval_s)
        app.state.gate = Gate(self.settings.auth)
        app.state.metrics = RouteMetrics()
        app.state.max_body_bytes = self.settings.max_body_bytes

    async def __del__(self) -> None:
        await self.log.close()
        await self.events.close()
        if self.stream is not None:
            await self.stream.close()

    @app.post("/v1/classify", response_model=ClassifyResponse, **V1)
    async def classify(self, body: ClassifyRequest, request: Request, response: Response
                       ) -> dict:
        """Topic labels and probabilities for up to 64 texts (by the model version of the
        caller's variant when an experiment runs on this route); texts that version answered
        before come from the classifier's cache unless the request says `Cache-Control:
        no-cache` (`X-Cache: hit`, `partial` or `miss` says which)."""
        start = time.perf_counter()
        exposure = self._exposure("/v1/classify", request, body.user_id, body.context)
        with self._failures_logged(request, "/v1/classify", exposure, start):
            out = await call_with_retry(self.classifier.classify, body.texts,
                                        exposure.variant.ref if exposure else None,
                                        no_cache(request))
        cached = out.pop("cached")
        response.headers["X-Cache"] = ("hit" if cached == len(body.texts) else
                                       "partial" if cached else "miss")
        self._log(request, "/v1/classify", out["model"], out["version"], body.texts,
                  out["predictions"], start, exposure)
        return self._tagged(out, exposure)

    @app.post("/v1/rank", response_model=RankResponse, **V1)
    async def rank(self, body: RankRequest, request: Request) -> dict:
        """Candidate articles ordered by the user's predicted click probability (by the model
        of the user's variant when an experiment runs on this route)."""
        start = time.perf_counter()
        exposure = self._exposure("/v1/rank", request, body.user_id, body.context)
        with self._failures_logged(request, "/v1/rank", exposure, start):
            out = await call_with_retry(self.ranker.rank, body.user_id, body.article_ids,
                                        exposure.variant.ref if exposure else "champion")
        self._log(request, "/v1/rank", out["model"], out["version"], out.pop("features"),
                  out["ranking"], start, exposure)
        return self._tagged(out, exposure)

    @app.post("/v1/events", response_model=EventsResponse, **V1)
    async def events(self, body: EventsRequest, request: Request) -> dict:
        """Outcome events (impressions, clicks, dwell seconds, conversions) for A/B analysis
        and, when the app has a `stream`, for the stream features."""
        now = datetime.now(timezone.utc)
        self.events.append([{**event.model_dump(), "timestamp": now,
                             "api_key": request.state.api_key} for event in body.events])
        request.state.model = "events"
        if self.stream is not None:
            await self._publish(body.events, request.state.request_id, now)
        return {"accepted": len(body.events)}

    async def _publish(self, events: list[Event], request_id: str, now: datetime) -> None:
        """Put the events on the stream; if it is unreachable they are counted and logged,
        and the request still succeeds (the event log has them)."""
        ts_ms = int(now.timestamp() * 1000)
        try:
            await self.stream.publish([StreamEvent(
                event_id=e.event_id or f"{request_id}:{i}", type=e.type, user_id=e.user_id,
                article_id=e.article_id, value=e.value, ts_ms=ts_ms)
                for i, e in enumerate(events)])
        except Exception:
            logger.exception("publishing %d events to the stream failed", len(events))
            self.stream_failures.inc(len(events))

    @app.post("/v1/retrieve", response_model=RetrieveResponse, **V1)
    async def retrieve(self, body: RetrieveRequest, request: Request) -> dict:
        """The k indexed chunks nearest the query."""
        start = time.perf_counter()
        out = await call_with_retry(self.retriever.retrieve, body.query, body.k,
                                    body.mode or self.settings.retrieval_mode, body.filters)
        self._log(request, "/v1/retrieve", out["index"], "", body.model_dump(),
                  [c["chunk_id"] for c in out["chunks"]], start)
        return out

    @app.post("/v1/rag", response_model=RagResponse, **V1)
    async def rag(self, body: RagRequest, request: Request) -> Any:
        """Retrieve chunks, then answer from them with citations (SSE when `stream`). When the
        chunks do not fit the model's context, the lowest-ranked ones are left out."""
        start = time.perf_counter()
        exposure = self._exposure("/v1/rag", request, body.user_id, body.context)
        model = exposure.variant.model if exposure else body.model or self.settings.rag_model
        with self._failures_logged(request, "/v1/rag", exposure, start):
            found = (await call_with_retry(
                self.retriever.retrieve, body.question, body.k,
                body.mode or self.settings.retrieval_mode, body.filters))["chunks"]
            while True:
                completion = CompletionRequest(
                    model=model, max_tokens=body.max_tokens, temperature=0.0, stop=["\n"],
                    prompt=rag_prompt(body.question, [c["text"] for c in found]),
                    stream=body.stream)
                stream = self.generator.options(stream=True).completions.remote(completion)
                try:
                    first = await stream.__anext__()
                    break
                except RayTaskError as exc:
                    if not (isinstance(exc.cause, RequestError) and exc.cause.status == 400
                            and len(found) > 1):
                        raise
                    found = found[:-1]
        citations = [{"number": i, "chunk_id": c["chunk_id"], "doc_id": c["doc_id"],
                      "title": c["title"], "score": c["score"]} for i, c in enumerate(found, 1)]
        request.state.model = model
        if body.stream:  # logged as it starts: the answer goes to the client as it comes
            self._log(request, "/v1/rag", model, "", body.model_dump(),
                      {"answer": None, "chunks": [c["chunk_id"] for c in found]}, start, exposure)

            async def rest() -> AsyncIterator[dict]:
                yield {"delta": first["choices"][0]["text"]}
                async for chunk in stream:
                    yield {"delta": chunk["choices"][0]["text"]}
            return _sse(self._tagged({"model": model, "citations": citations}, exposure),
                        rest())
        answer = first["choices"][0]["text"].strip()
        for citation, chunk in zip(citations, found, strict=True):
            citation["support"] = faithfulness(answer, chunk["text"])
        self._log(request, "/v1/rag", model, first["version"], body.model_dump(),
                  {"answer": answer, "chunks": [c["chunk_id"] for c in found]}, start, exposure)
        return self._tagged({"answer": answer, "model": model, "citations": citations,
                             "usage": first["usage"]}, exposure)

    async def _openai(self, method: str, body: Any, request: Request, route: str) -> Any:
        start = time.perf_counter()
        stream = getattr(self.generator.options(stream=True), method).remote(body)
        first = await stream.__anext__()
        request.state.model = body.model
        if body.stream:
            return _sse(first, stream)
        self._log(request, route, body.model, first["version"], body.model_dump(),
                  first["choices"], start)
        return first

    @app.post("/v1/completions", **V1)
    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        """OpenAI-compatible text completion (SSE when `stream`); `model` picks the adapter."""
        return await self._openai("completions", body, request, "/v1/completions")

    @app.post("/v1/chat/completions", **V1)
    async def chat(self, body: ChatRequest, request: Request) -> Any:
        """OpenAI-compatible chat completion (SSE when `stream`)."""
        return await self._openai("chat", body, request, "/v1/chat/completions")

    @app.post("/v1/embeddings", **V1)
    async def embeddings(self, body: EmbeddingRequest, request: Request) -> dict:
        """OpenAI-compatible sentence embeddings from the retriever's encoder."""
        start = time.perf_counter()
        texts = [body.input] if isinstance(body.input, str) else body.input
        out = await call_with_retry(self.retriever.embed, texts)
        if body.model not in (None, out["model"]):
            raise RequestError(404, f"embedding model {body.model!r} is not served; "
                                    f"use {out['model']!r} or leave `model` out")
        self._log(request, "/v1/embeddings", out["model"], "", texts, len(texts), start)
        return {"object": "list", "model": out["model"],
                "data": [{"object": "embedding", "index": i, "embedding": e}
                         for i, e in enumerate(out["embeddings"])],
                "usage": {"prompt_tokens": out["tokens"], "total_tokens": out["tokens"]}}

    @app.get("/v1/models", **V1)
    async def models(self) -> dict:
        """Served generation models (base and adapters)."""
        return {"object": "list", "data": await self.generator.models.remote()}

    @app.get("/healthz")
    def healthz(self) -> dict:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness: every deployment answers with its loaded model (503 until then). A
        deployment with no running replica yet would queue the call: it gets `READY_TIMEOUT_S`."""
        parts = {"classifier": self.classifier, "ranker": self.ranker,
                 "retriever": self.retriever, "generator": self.generator}
        status, code = {}, 200
        for name, handle in parts.items():
            try:
                status[name] = await asyncio.wait_for(handle.ready.remote(), READY_TIMEOUT_S)
            except asyncio.TimeoutError:
                status[name], code = {"error": f"no replica answered within {READY_TIMEOUT_S:g} "
                                               "s (still starting?)"}, 503
            except Exception as exc:  # failed to load: say which and why
                status[name], code = {"error": f"{type(exc).__name__}: {exc}"[:300]}, 503
        return JSONResponse({"ready": code == 200, **status}, status_code=code)

    def _exposure(self, route: str, request: Request, user_id: int | None, context: Context
                  ) -> Exposure | None:
        """The request's experiment and variant on `route`, if it is in one."""
        units = {"api_key": request.state.api_key,
                 "user_id": None if user_id is None else str(user_id)}
        return self.experiments.assign(route, units, context.model_dump())

    @contextmanager
    def _failures_logged(self, request: Request, route: str, exposure: Exposure | None,
                         start: float) -> Iterator[None]:
        """A failed exposure is logged (status 503): it counts against its variant's error
        rate."""
        try:
            yield
        except Exception:
            if exposure:
                self.log.record(request.state.request_id, route, request.state.api_key,
                                exposure.variant.model_name, "", [], [],
                                (time.perf_counter() - start) * 1000, 503, exposure.logged)
            raise

    @staticmethod
    def _tagged(out: dict, exposure: Exposure | None) -> dict:
        """The answer with its experiment and variant (None outside any)."""
        if exposure:
            out["experiment"], out["variant"] = exposure.experiment.name, exposure.variant.name
        return out

    def _log(self, request: Request, route: str, model: str, version: Any, inputs: Any,
             output: Any, start: float, exposure: Exposure | None = None) -> None:
        request.state.model = model
        self.log.record(request.state.request_id, route, request.state.api_key, model, version,
                        inputs, output, (time.perf_counter() - start) * 1000, 200,
                        exposure.logged if exposure else None)
