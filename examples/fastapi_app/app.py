"""A chatbot backend on FastAPI with convo: per-user conversations, streamed replies, safe retries.

    export DATABASE_URL=postgresql://app:secret@db/chat OPENAI_API_KEY=sk-...
    python migrate.py                       # the deploy step, once per release
    uvicorn app:app --workers 4             # then any number of workers and servers

Every request names its user in an ``X-User`` header (put your authentication
there); a user sees only their own conversations. ``POST`` a message with an
``Idempotency-Key`` header and a retry of the same request (a timeout, a
double click) returns the stored reply: one user message, one model call.
"""

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from convo import (
    APIError,
    AsyncChat,
    AsyncOpenAIClient,
    AsyncStore,
    AsyncTurnStream,
    ContextOverflowError,
    ConversationNotFound,
    ConvoError,
    InvalidMessageError,
    Message,
    StoreInputError,
    TextDelta,
    TurnEvent,
    TurnResult,
)

SYSTEM_PROMPT = "You are a helpful, concise assistant."


class NewConversation(BaseModel):
    title: str | None = None


class UserMessage(BaseModel):
    text: str


def get_chat(request: Request) -> AsyncChat:
    chat: AsyncChat = request.app.state.chat  # made once per worker, in the lifespan below
    return chat


Chat = Annotated[AsyncChat, Depends(get_chat)]
User = Annotated[str, Header(alias="X-User")]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]

router = APIRouter()


@router.post("/conversations", status_code=201)
async def create_conversation(body: NewConversation, chat: Chat, user: User) -> dict[str, str]:
    conv = await chat.store.create_conversation(title=body.title, owner=user)
    await chat.store.append(conv.id, Message.system(SYSTEM_PROMPT), owner=user)
    return {"id": conv.id}


@router.get("/conversations")
async def list_conversations(chat: Chat, user: User, cursor: str | None = None) -> dict[str, Any]:
    page = await chat.store.list_conversations(owner=user, limit=20, cursor=cursor)
    items = [{"id": c.id, "title": c.title, "updated_at": c.updated_at.isoformat()} for c in page.items]
    return {"items": items, "next_cursor": page.next_cursor}


@router.get("/conversations/{cid}/messages")
async def list_messages(cid: str, chat: Chat, user: User) -> list[dict[str, Any]]:
    newest = await chat.store.messages(cid, owner=user, limit=100, newest_first=True)
    return [
        {"seq": m.seq, "role": m.role, "text": m.text}
        for m in reversed(newest)
        if m.role in ("user", "assistant") and m.text
    ]


def turn_json(result: TurnResult) -> dict[str, Any]:
    return {
        "reply": result.text,
        "seq": result.reply.seq,
        "run_id": result.run.id if result.run else None,
        "from_store": result.from_store,  # True: a retry, answered without calling the model
    }


@router.post("/conversations/{cid}/messages")
async def post_message(
    cid: str, body: UserMessage, chat: Chat, user: User, key: IdempotencyKey = None
) -> dict[str, Any]:
    result = await chat.send(cid, body.text, owner=user, idempotency_key=key)
    return turn_json(result)


@router.post("/conversations/{cid}/messages/stream")
async def post_message_streamed(
    cid: str, body: UserMessage, chat: Chat, user: User, key: IdempotencyKey = None
) -> StreamingResponse:
    stream = chat.stream(cid, body.text, owner=user, idempotency_key=key)
    try:
        # Store the user message, build, send, and wait for the first delta *before*
        # answering: a missing conversation or a failed model is still a plain 404 / 502.
        first: TurnEvent | None = await anext(stream)
    except StopAsyncIteration:
        first = None  # a retry of a finished turn: nothing to stream, the reply is stored
    return StreamingResponse(
        server_sent_events(stream, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def server_sent_events(stream: AsyncTurnStream, first: TurnEvent | None) -> AsyncIterator[str]:
    """``delta`` events with the reply's text as it arrives, then ``done`` (or ``error``)."""
    async with stream:  # a client that goes away closes it: the run is recorded as cancelled
        try:
            if isinstance(first, TextDelta):
                yield sse("delta", {"text": first.text})
            async for event in stream:
                if isinstance(event, TextDelta):
                    yield sse("delta", {"text": event.text})
            result = await stream.result()
        except APIError:
            # The stream broke midway: the run says failed and no half reply is stored;
            # the client retries with the same Idempotency-Key.
            yield sse("error", {"detail": "the model is unavailable, try again"})
            return
        if first is None:
            yield sse("delta", {"text": result.text})
        yield sse("done", turn_json(result))


ERRORS: list[tuple[type[ConvoError], int, str]] = [
    (ConversationNotFound, 404, "no such conversation"),  # other users' too: ids do not leak
    (ContextOverflowError, 413, "the message is too long"),
    (InvalidMessageError, 422, "invalid message"),
    (StoreInputError, 422, "invalid input"),
    (APIError, 502, "the model is unavailable, try again"),
]


async def convo_error(request: Request, exc: Exception) -> JSONResponse:
    for error, status, detail in ERRORS:
        if isinstance(exc, error):
            return JSONResponse({"detail": detail}, status_code=status)
    raise exc


def create_app(
    database_url: str | None = None,
    *,
    model: str | None = None,
    llm_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The app. Production passes nothing (settings come from the environment);
    tests pass a database URL and the fake model's transport."""
    url = database_url or os.environ.get("DATABASE_URL", "sqlite:///chatbot.db")
    model = model or os.environ.get("CHAT_MODEL", "gpt-4o-mini")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One store (a connection pool) and one HTTP client per worker process.
        store = AsyncStore(url, pool_pre_ping=True)
        client = AsyncOpenAIClient(transport=llm_transport)  # OPENAI_API_KEY, OPENAI_BASE_URL
        try:
            await store.check_schema()  # migrations are the deploy step's job: migrate.py
            app.state.chat = AsyncChat(store, client, model=model, params={"max_tokens": 500})
            yield
        finally:
            await client.close()
            await store.close()

    app = FastAPI(title="chatbot", lifespan=lifespan)
    app.include_router(router)
    for error, _, _ in ERRORS:
        app.add_exception_handler(error, convo_error)
    return app


app = create_app()  # for `uvicorn app:app`
