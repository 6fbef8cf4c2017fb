"""Request and response bodies of the HTTP API, with the limits a client must respect.

Types are strict on every route: `true` is not the id 1 and `"5"` is not the number 5. Our own
routes forbid unknown fields (a typo is an error, not silently ignored); the OpenAI-compatible
routes ignore fields they do not use, as OpenAI clients send many.
The limits (text length, batch size, k, max tokens) are part of the API and show in `/docs`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from llm.lexical_index import Mode

Text = Annotated[str, StringConstraints(min_length=1, max_length=4000)]
EntityId = Annotated[int, Field(ge=0, le=2**63 - 1, description="an int64 id")]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
Stop = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain a non-whitespace character")
    return value


def _stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise ValueError("give at most 4 stop sequences")
    return stops


class Strict(BaseModel):
    """Our own request bodies: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)


class OpenAIBody(BaseModel):
    """OpenAI-style request bodies: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


class Context(Strict):
    """Who is asking, for experiment targeting."""

    country: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None
    device: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None


class ClassifyRequest(Strict):
    texts: list[Text] = Field(min_length=1, max_length=64, description="texts to classify")
    user_id: EntityId | None = Field(default=None, description="who asks, when an experiment "
                                                                 "randomises users")
    context: Context = Context()

    @field_validator("texts")
    @classmethod
    def _texts_not_blank(cls, texts: list[str]) -> list[str]:
        return [_not_blank(t) for t in texts]


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]
    experiment: str | None = Field(default=None, description="the experiment this answer is in")
    variant: str | None = Field(default=None, description="its variant (None: not in one)")


class RankRequest(Strict):
    user_id: EntityId
    article_ids: list[EntityId] = Field(min_length=1, max_length=200)
    context: Context = Context()

    @field_validator("article_ids")
    @classmethod
    def _unique(cls, ids: list[int]) -> list[int]:
        if len(set(ids)) != len(ids):
            raise ValueError("article ids must be unique; remove the repeated ones")
        return ids


class RankedArticle(BaseModel):
    article_id: int
    score: float
    features_found: bool


class RankResponse(BaseModel):
    model: str
    version: int
    user_id: int
    ranking: list[RankedArticle]
    experiment: str | None = Field(default=None, description="the experiment this answer is in")
    variant: str | None = Field(default=None, description="its variant (None: not in one)")


class Event(Strict):
    """An outcome: what a user did after an answer (`request_id`: its X-Request-ID)."""

    type: Literal["impression", "click", "dwell", "conversion"]
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="your id for this event, so a retried post counts it once "
        "in the stream features (default: the post's X-Request-ID and the event's position)")
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    user_id: EntityId | None = None
    article_id: EntityId | None = None
    value: float = Field(default=1.0, ge=0, le=1e7, allow_inf_nan=False,
                         description="1 per impression, click or conversion; seconds for dwell")

    @model_validator(mode="after")
    def _keyed(self) -> Event:
        if self.request_id is None and self.user_id is None:
            raise ValueError("give request_id (the answer's X-Request-ID) and/or user_id, so the "
                             "event joins an exposure")
        return self


class EventsRequest(Strict):
    events: list[Event] = Field(min_length=1, max_length=1000)


class EventsResponse(BaseModel):
    accepted: int


Filters = Annotated[
    dict[Annotated[str, StringConstraints(min_length=1, max_length=64)],
         Annotated[list[Annotated[str, StringConstraints(max_length=200)]],
                   Field(min_length=1, max_length=100)]],
    Field(max_length=8, description="only chunks whose column (one of the index's "
                                    "filter_columns) holds one of the values")]


class RetrieveRequest(Strict):
    query: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    k: int = Field(default=5, ge=1, le=20)
    mode: Mode | None = Field(default=None, description="dense, lexical (BM25) or hybrid (both, "
                                                        "fused); default: the app's")
    filters: Filters | None = None

    _query = field_validator("query")(_not_blank)


class Chunk(BaseModel):
    chunk_id: int
    doc_id: str
    title: str
    text: str
    score: float


class RetrieveResponse(BaseModel):
    index: str
    mode: Mode
    chunks: list[Chunk]


class RagRequest(Strict):
    question: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    k: int = Field(default=3, ge=1, le=10)
    mode: Mode | None = Field(default=None, description="how chunks are retrieved (see "
                                                        "/v1/retrieve); default: the app's")
    filters: Filters | None = None
    max_tokens: int = Field(default=48, ge=1, le=256)
    model: str | None = Field(default=None, description="served model; default: the app's "
                                                         "(an experiment's variant overrides)")
    stream: bool = False
    user_id: EntityId | None = Field(default=None, description="who asks, when an experiment "
                                                                 "randomises users")
    context: Context = Context()

    _question = field_validator("question")(_not_blank)


class Citation(BaseModel):
    number: int
    chunk_id: int
    doc_id: str
    title: str
    score: float
    support: float = Field(description="share of the answer's words found in this chunk")


class RagResponse(BaseModel):
    answer: str
    model: str
    citations: list[Citation]
    experiment: str | None = Field(default=None, description="the experiment this answer is in")
    variant: str | None = Field(default=None, description="its variant (None: not in one)")
    usage: dict[str, int]


class Sampling(OpenAIBody):
    """What completions and chat share: the served model and how to sample from it."""

    model: str = Field(description="a served model: the base or an adapter (GET /v1/models)")
    max_tokens: int = Field(default=16, ge=1, le=256)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Stop | list[Stop] | None = None
    seed: Seed | None = None
    stream: bool = False

    _stop = field_validator("stop")(_stop_list)


class CompletionRequest(Sampling):
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=8000)]


class Message(OpenAIBody):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, StringConstraints(max_length=8000)]


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1, max_length=32)


class EmbeddingRequest(OpenAIBody):
    input: Text | list[Text] = Field(description="a text or up to 64 texts")
    model: str | None = None

    @field_validator("input")
    @classmethod
    def _batch(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= 64:
            raise ValueError("give 1 to 64 texts")
        return value
