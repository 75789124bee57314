"""``convo complete`` and ``convo serve-fake``: talk to an OpenAI-compatible server."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import console, emit_json, fail, guard

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    @app.command()
    def complete(
        text: Annotated[str, typer.Argument(help="The user message (chat) or the prompt (completion).")],
        model: Annotated[str, typer.Option("--model", help="Model name.")],
        mode: Annotated[str, typer.Option("--mode", help="chat | completion")] = "chat",
        stream: Annotated[bool, typer.Option("--stream", help="Stream the reply as it comes.")] = False,
        base_url: Annotated[
            str | None, typer.Option("--base-url", help="Server base URL (default: $OPENAI_BASE_URL).")
        ] = None,
        max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Reply token limit.")] = None,
        json_: JsonOpt = False,
    ) -> None:
        """Send one request (API key from $OPENAI_API_KEY) and print the reply and usage."""
        from .._client import OpenAIClient

        if mode not in ("chat", "completion"):
            raise fail(f"--mode must be chat or completion, not {mode!r}")
        params = {"max_tokens": max_tokens} if max_tokens is not None else {}
        with guard(), OpenAIClient(base_url=base_url) as client:
            if mode == "chat":
                messages = [{"role": "user", "content": text}]
                if stream:
                    with client.chat_stream(
                        model=model, messages=messages, stream_options={"include_usage": True}, **params
                    ) as s:
                        for chunk in s:
                            for choice in chunk.choices:
                                if choice.delta.content and not json_:
                                    console.out(choice.delta.content, end="", highlight=False)
                        result = s.final()
                else:
                    result = client.chat(model=model, messages=messages, **params)
                reply = result.choices[0].message.content or "" if result.choices else ""
            else:
                if stream:
                    with client.complete_stream(
                        model=model, prompt=text, stream_options={"include_usage": True}, **params
                    ) as cs:
                        for cchunk in cs:
                            for cchoice in cchunk.choices:
                                if cchoice.text and not json_:
                                    console.out(cchoice.text, end="", highlight=False)
                        result = cs.final()  # type: ignore[assignment]
                else:
                    result = client.complete(model=model, prompt=text, **params)  # type: ignore[assignment]
                reply = result.choices[0].text if result.choices else ""  # type: ignore[union-attr]
        if json_:
            emit_json(result)
            return
        if stream:
            console.out("")
        else:
            console.out(reply, highlight=False)
        u = result.usage
        if u is not None:
            console.print(
                f"[dim]usage: {u.prompt_tokens} prompt + {u.completion_tokens} completion = {u.total_tokens} tokens[/]",
                highlight=False,
            )

    @app.command("serve-fake")
    def serve_fake(
        host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="Port (0 picks a free one).")] = 8000,
    ) -> None:
        """Run convo's fake OpenAI-compatible backend on loopback (API under /v1)."""
        from ..testing import FakeServer, serve_forever

        def ready(server: FakeServer) -> None:
            # the real port (--port 0 picks one), flushed so a parent process can read it
            console.print(f"fake OpenAI-compatible backend on {server.base_url} (Ctrl-C stops)", highlight=False)
            console.file.flush()

        with guard():
            serve_forever(host=host, port=port, on_ready=ready)
