"""``convo send`` and ``convo chat``: turns on stored conversations (:class:`~convo.Chat`).

A turn stores the user message, builds the context, sends it, stores the
reply and records the run; these commands are a shell over that and print
what happened.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .._exceptions import APIError, ConvoError, NotMigratedError
from ._common import console, emit_json, fail, open_store
from ._turn_view import tool_calls_text, turn_summary, visible

if TYPE_CHECKING:
    from .._client.client import OpenAIClient
    from .._store.store import Store
    from .._turns.chat import Chat
    from .._turns.plan import TurnResult

__all__ = ["TurnSettings", "register", "turn_errors"]

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="Model (default: the model of the conversation's last run)."),
]
ModeOpt = Annotated[str, typer.Option("--mode", help="chat | completion")]
TemplateOpt = Annotated[
    str | None,
    typer.Option(
        "--template",
        help="Completion template: a name, a .jinja file or a tokenizer_config.json.",
    ),
]
BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="Server base URL (default: $OPENAI_BASE_URL).")
]
BudgetOpt = Annotated[int | None, typer.Option("--budget", help="Prompt token budget.")]
ReserveOpt = Annotated[int | None, typer.Option("--reserve", help="Tokens reserved for the reply.")]
EncodingOpt = Annotated[
    str | None, typer.Option("--encoding", help="Tokenizer encoding for unknown models.")
]
MaxTokensOpt = Annotated[int | None, typer.Option("--max-tokens", help="Reply token limit.")]
OwnerOpt = Annotated[str | None, typer.Option("--owner", help="Scope to this owner.")]


@dataclass(frozen=True)
class TurnSettings:
    """What the turn commands take from their options to make a :class:`~convo.Chat`."""

    model: str | None
    mode: str = "chat"
    template: str | None = None
    budget: int | None = None
    reserve: int | None = None
    encoding: str | None = None
    max_tokens: int | None = None

    def check(self) -> None:
        if self.mode not in ("chat", "completion"):
            raise fail(f"--mode must be chat or completion, not {self.mode!r}", 2)

    def with_model(self, store: Store, conversation_id: str, owner: str | None) -> TurnSettings:
        """These settings, with the model of the conversation's last run if none was given."""
        if self.model is not None:
            return self
        conversation = store.get_conversation(conversation_id, owner=owner)
        current = conversation.current_branch_id or conversation.id
        for cid in dict.fromkeys((current, conversation.id)):
            page = store.list_runs(cid, owner=owner, limit=1)
            if page.items:
                return replace(self, model=page.items[0].model)
        raise fail("--model is required: the conversation has no run to take it from", 2)

    def chat(self, store: Store, client: OpenAIClient) -> Chat:
        from .._turns.chat import Chat

        assert self.model is not None
        params: dict[str, Any] = {}
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens  # sent as the profile's parameter name
        mode: Any = self.mode
        from ._context import _model_advice

        # An unknown model is answered with the flags that fix it, as `convo context` does.
        with _model_advice(self.model, self.encoding, self.budget):
            return Chat(
                store, client, model=self.model, mode=mode, template=self.template,
                budget=self.budget, reserve=self.reserve, encoding=self.encoding, params=params,
            )


@contextmanager
def turn_errors(store: Store | None = None, conversation_id: str | None = None,
                owner: str | None = None) -> Iterator[None]:
    """One ``error: ...`` line and exit 1 for convo's errors; 130 for Ctrl-C.

    A failed request leaves the user message stored and a run saying what
    happened: the message names that run, so the failure can be inspected.
    """
    try:
        yield
    except NotMigratedError as exc:
        raise fail(visible(str(exc))) from None
    except APIError as exc:
        hint = _run_hint(store, conversation_id, owner)
        raise fail(visible(f"{type(exc).__name__}: {exc}{hint}")) from None
    except ConvoError as exc:
        raise fail(visible(f"{type(exc).__name__}: {exc}")) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted{_run_hint(store, conversation_id, owner)}", 130) from None


def _run_hint(store: Store | None, conversation_id: str | None, owner: str | None) -> str:
    """`` (run ID: failed; ...)`` for the conversation's newest run, if it can be read."""
    if store is None or conversation_id is None:
        return ""
    try:
        conversation = store.get_conversation(conversation_id, owner=owner)
        cid = conversation.current_branch_id or conversation.id
        page = store.list_runs(cid, owner=owner, limit=1)
    except ConvoError:
        return ""
    if not page.items or page.items[0].status in ("ok", "pending"):
        return ""
    run = page.items[0]
    return (f" (run {run.id}: {run.status}; the user message is stored: send again, "
            f"with the same --idempotency-key if you gave one, to continue the turn)")


def print_reply(result: TurnResult, *, streamed: bool) -> None:
    """The reply (unless it was streamed already) and its tool calls."""
    if not streamed:
        console.out(visible(result.text), highlight=False)
    elif not result.text.endswith("\n"):
        console.out("", highlight=False)
    if result.pending_tool_calls:
        console.out(visible(tool_calls_text(result.pending_tool_calls)), highlight=False)


def stream_turn(chat: Chat, conversation_id: str, text: str | None, *, owner: str | None,
                key: str | None, show: bool) -> TurnResult:
    """Run a streamed turn, printing text deltas as they arrive (when ``show``)."""
    from .._turns.plan import TextDelta

    with chat.stream(conversation_id, text, idempotency_key=key, owner=owner) as stream:
        for event in stream:
            if show and isinstance(event, TextDelta):
                console.out(visible(event.text), end="", highlight=False)
        return stream.result()


def register(app: typer.Typer) -> None:
    @app.command()
    def send(
        ctx: typer.Context,
        conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
        text: Annotated[
            str | None,
            typer.Argument(help="The user message (none: answer what is stored)."),
        ] = None,
        stream: Annotated[bool, typer.Option("--stream", help="Print the reply as it comes.")] = False,
        model: ModelOpt = None,
        mode: ModeOpt = "chat",
        template: TemplateOpt = None,
        base_url: BaseUrlOpt = None,
        budget: BudgetOpt = None,
        reserve: ReserveOpt = None,
        encoding: EncodingOpt = None,
        max_tokens: MaxTokensOpt = None,
        key: Annotated[
            str | None,
            typer.Option("--idempotency-key",
                         help="Retry-safe turn: the same key never stores a second reply."),
        ] = None,
        owner: OwnerOpt = None,
        json_: Annotated[bool, typer.Option("--json", help="Print the turn's result as JSON.")] = False,
    ) -> None:
        """Send one turn: store TEXT, build the context, send it, store the reply and the run."""
        from .._client.client import OpenAIClient

        settings = TurnSettings(model, mode, template, budget, reserve, encoding, max_tokens)
        settings.check()
        with open_store(ctx) as store, turn_errors(store, conversation_id, owner):
            settings = settings.with_model(store, conversation_id, owner)
            with OpenAIClient(base_url=base_url) as client:
                chat = settings.chat(store, client)
                if stream:
                    result = stream_turn(chat, conversation_id, text, owner=owner, key=key,
                                         show=not json_)
                else:
                    result = chat.send(conversation_id, text, idempotency_key=key, owner=owner)
        if json_:
            emit_json(result)
            return
        print_reply(result, streamed=stream and not result.from_store)
        console.print(turn_summary(result, conversation_id), highlight=False, soft_wrap=True)

    @app.command()
    def chat(
        ctx: typer.Context,
        conversation_id: Annotated[
            str | None, typer.Argument(help="Conversation id (none: a new conversation).")
        ] = None,
        model: ModelOpt = None,
        mode: ModeOpt = "chat",
        template: TemplateOpt = None,
        base_url: BaseUrlOpt = None,
        budget: BudgetOpt = None,
        reserve: ReserveOpt = None,
        encoding: EncodingOpt = None,
        max_tokens: MaxTokensOpt = None,
        owner: OwnerOpt = None,
        title: Annotated[
            str | None, typer.Option("--title", help="Title of a new conversation.")
        ] = None,
    ) -> None:
        """An interactive session: type messages, read streamed replies (/help lists commands)."""
        from .._client.client import OpenAIClient
        from ._session import Session

        settings = TurnSettings(model, mode, template, budget, reserve, encoding, max_tokens)
        settings.check()
        with open_store(ctx) as store, turn_errors():
            if conversation_id is None:
                if settings.model is None:
                    raise fail("--model is required for a new conversation", 2)
                store.check_schema()
                conversation_id = store.create_conversation(title=title, owner=owner).id
                created = True
            else:
                store.get_conversation(conversation_id, owner=owner)
                settings = settings.with_model(store, conversation_id, owner)
                created = False
            with OpenAIClient(base_url=base_url) as client:
                session = Session(store, client, conversation_id, settings, owner=owner)
                session.run(created=created)
        sys.stdout.flush()
