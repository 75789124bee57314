"""``convo complete`` and ``convo serve-fake``: talk to an OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import console, emit_json, fail, visible

if TYPE_CHECKING:
    from .._client.client import OpenAIClient
    from .._client.params import ChatParams, CompletionParams
    from .._client.types import ChatCompletion, Completion

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    @app.command()
    def complete(
        text: Annotated[
            str, typer.Argument(help="The user message (chat) or the prompt (completion).")
        ],
        model: Annotated[str, typer.Option("--model", help="Model name.")],
        mode: Annotated[str, typer.Option("--mode", help="chat | completion")] = "chat",
        stream: Annotated[
            bool, typer.Option("--stream", help="Stream the reply as it comes.")
        ] = False,
        base_url: Annotated[
            str | None,
            typer.Option("--base-url", help="Server base URL (default: $OPENAI_BASE_URL)."),
        ] = None,
        max_tokens: Annotated[
            int | None, typer.Option("--max-tokens", help="Reply token limit.")
        ] = None,
        json_: JsonOpt = False,
    ) -> None:
        """Send one request (API key from $OPENAI_API_KEY) and print the reply and usage."""
        from .._client.client import OpenAIClient

        if mode not in ("chat", "completion"):
            raise fail(f"--mode must be chat or completion, not {mode!r}")
        # A reply is remote text: its control characters are shown, not obeyed.
        show = (
            (lambda piece: None)
            if json_
            else (lambda piece: console.out(visible(piece), end="", highlight=False))
        )
        with OpenAIClient(base_url=base_url) as client:
            result: ChatCompletion | Completion
            if mode == "chat":
                result = _chat(client, model, text, stream, max_tokens, show)
            else:
                result = _complete(client, model, text, stream, max_tokens, show)
        if json_:
            emit_json(result)
            return
        console.out("" if stream else visible(result.text), highlight=False)
        u = result.usage
        if u is not None:
            console.print(
                f"[dim]usage: {u.prompt_tokens} prompt + {u.completion_tokens} completion"
                f" = {u.total_tokens} tokens[/]",
                highlight=False,
            )

    @app.command("serve-fake")
    def serve_fake(
        host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
        port: Annotated[
            int, typer.Option("--port", min=0, max=65535, help="Port (0 picks a free one).")
        ] = 8000,
    ) -> None:
        """Run convo's fake OpenAI-compatible backend on loopback (API under /v1)."""
        from ..testing import FakeServer, serve_forever

        def ready(server: FakeServer) -> None:
            # the real port (--port 0 picks one), flushed so a parent process can read it
            console.out(
                f"fake OpenAI-compatible backend on {visible(server.base_url)} (Ctrl-C stops)",
                highlight=False,
            )
            console.file.flush()

        try:
            serve_forever(host=host, port=port, on_ready=ready)
        except OSError as exc:  # unknown host, port taken, no permission
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _chat(
    client: OpenAIClient,
    model: str,
    text: str,
    stream: bool,
    max_tokens: int | None,
    show: Callable[[str], None],
) -> ChatCompletion:
    messages = [{"role": "user", "content": text}]
    params: ChatParams = {} if max_tokens is None else {"max_tokens": max_tokens}
    if not stream:
        return client.chat(model=model, messages=messages, **params)
    params["stream_options"] = {"include_usage": True}
    with client.chat_stream(model=model, messages=messages, **params) as s:
        for chunk in s:
            show(chunk.text)
        return s.final()


def _complete(
    client: OpenAIClient,
    model: str,
    text: str,
    stream: bool,
    max_tokens: int | None,
    show: Callable[[str], None],
) -> Completion:
    params: CompletionParams = {} if max_tokens is None else {"max_tokens": max_tokens}
    if not stream:
        return client.complete(model=model, prompt=text, **params)
    params["stream_options"] = {"include_usage": True}
    with client.complete_stream(model=model, prompt=text, **params) as s:
        for chunk in s:
            show(chunk.text)
        return s.final()
