"""``convo new | ls | show | add | fork | search``: conversations and messages."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from ._common import (
    ReadUrlOpt,
    command_line,
    console,
    emit_json,
    fail,
    open_store,
    safe,
    visible,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
OwnerOpt = Annotated[str | None, typer.Option("--owner", help="Scope to this owner.")]


def _meta(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--meta expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _id_column(header: str) -> Column:
    # ids are what a user copies into the next command: never cut or wrapped
    return Column(header, no_wrap=True, min_width=32)


def register(app: typer.Typer) -> None:
    @app.command()
    def new(
        ctx: typer.Context,
        title: Annotated[str | None, typer.Option("--title", help="Title.")] = None,
        owner: OwnerOpt = None,
        meta: Annotated[
            list[str] | None,
            typer.Option("--meta", help="Metadata KEY=VALUE (JSON values allowed); repeatable."),
        ] = None,
        json_: JsonOpt = False,
    ) -> None:
        """Create a conversation and print its id."""
        with open_store(ctx) as store:
            conv = store.create_conversation(title=title, owner=owner, metadata=_meta(meta))
        if json_:
            emit_json(conv)
        else:
            console.out(visible(conv.id), highlight=False)

    @app.command("ls")
    def ls(
        ctx: typer.Context,
        owner: OwnerOpt = None,
        limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 20,
        cursor: Annotated[
            str | None, typer.Option("--cursor", help="Continue after this page.")
        ] = None,
        meta: Annotated[
            list[str] | None, typer.Option("--meta", help="Filter on metadata KEY=VALUE.")
        ] = None,
        json_: JsonOpt = False,
    ) -> None:
        """List conversations, most recently updated first."""
        with open_store(ctx) as store:
            page = store.list_conversations(
                owner=owner, metadata=_meta(meta) or None, limit=limit, cursor=cursor
            )
        if json_:
            emit_json({"items": page.items, "next_cursor": page.next_cursor})
            return
        table = Table("title", "owner", "messages", "updated")
        table.columns.insert(0, _id_column("id"))
        for c in page.items:
            table.add_row(
                safe(c.id),
                safe(c.title or ""),
                safe(c.owner or ""),
                str(c.last_seq),
                c.updated_at.isoformat(timespec="seconds"),
            )
        console.print(table)
        if page.next_cursor:
            # the same listing's next page: same database and filters
            args = ["ls", *(["--owner", owner] if owner is not None else [])]
            for pair in meta or []:
                args += ["--meta", pair]
            if limit != 20:
                args += ["--limit", str(limit)]
            more = command_line(ctx, *args, "--cursor", page.next_cursor)
            console.out(f"more: {visible(more)}", highlight=False)

    @app.command()
    def show(
        ctx: typer.Context,
        conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
        owner: OwnerOpt = None,
        last: Annotated[
            int | None, typer.Option("--last", help="Only the newest N messages.")
        ] = None,
        json_: JsonOpt = False,
    ) -> None:
        """Show a conversation and its messages (inherited ones included for forks)."""
        with open_store(ctx) as store:
            conv = store.get_conversation(conversation_id, owner=owner)
            if last is not None:
                msgs = list(
                    reversed(
                        store.messages(conversation_id, newest_first=True, limit=last, owner=owner)
                    )
                )
            else:
                msgs = store.messages(conversation_id, owner=owner)
        if json_:
            emit_json({"conversation": conv, "messages": msgs})
            return
        head = f"[bold]{safe(conv.title or conv.id)}[/]  id={safe(conv.id)}"
        if conv.parent_id:
            head += f"  fork of {safe(conv.parent_id)} at seq {conv.fork_seq}"
        console.print(head, highlight=False)
        for m in msgs:
            body = m.text
            if m.tool_calls:
                body += " " + ", ".join(
                    f"→ {c.function.name}({c.function.arguments})" for c in m.tool_calls
                )
            who = f"{m.role} ({m.name})" if m.name else m.role
            console.print(
                f"[dim]{m.seq:>5}[/] [bold]{safe(who)}[/]: {safe(body)}", highlight=False
            )

    @app.command()
    def add(
        ctx: typer.Context,
        conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
        text: Annotated[str, typer.Argument(help="Message text.")],
        role: Annotated[
            str, typer.Option("--role", help="system | developer | user | assistant | tool")
        ] = "user",
        name: Annotated[str | None, typer.Option("--name", help="Participant name.")] = None,
        tool_call_id: Annotated[
            str | None, typer.Option("--tool-call-id", help="For role tool.")
        ] = None,
        pin: Annotated[
            bool, typer.Option("--pin", help="Always keep this message in contexts.")
        ] = False,
        key: Annotated[
            str | None, typer.Option("--idempotency-key", help="Retry-safe append.")
        ] = None,
        owner: OwnerOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        """Append a message."""
        msg: dict[str, Any] = {"role": role, "content": text}
        if name:
            msg["name"] = name
        if tool_call_id:
            msg["tool_call_id"] = tool_call_id
        with open_store(ctx) as store:
            stored = store.append(
                conversation_id, msg, idempotency_key=key, pinned=True if pin else None, owner=owner
            )
        if json_:
            emit_json(stored)
        else:
            console.out(f"{visible(stored.conversation_id)} seq {stored.seq}", highlight=False)

    @app.command()
    def fork(
        ctx: typer.Context,
        conversation_id: Annotated[str, typer.Argument(help="Conversation to fork.")],
        at: Annotated[
            int | None, typer.Option("--at", help="Last inherited seq (default: the newest).")
        ] = None,
        title: Annotated[str | None, typer.Option("--title", help="Title of the fork.")] = None,
        owner: OwnerOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        """Fork a conversation: the fork shares its history up to --at without copying it."""
        with open_store(ctx) as store:
            conv = store.fork(conversation_id, at=at, title=title, owner=owner)
        if json_:
            emit_json(conv)
        else:
            console.out(visible(conv.id), highlight=False)

    @app.command()
    def search(
        ctx: typer.Context,
        text: Annotated[str, typer.Argument(help="Text to look for (case-insensitive substring).")],
        owner: OwnerOpt = None,
        conversation: Annotated[
            str | None, typer.Option("--conversation", help="Only in this conversation.")
        ] = None,
        limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 20,
        read_url: ReadUrlOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        """Find messages whose text contains TEXT."""
        with open_store(ctx, read_url) as store:
            hits = store.search(text, owner=owner, conversation_id=conversation, limit=limit)
        if json_:
            emit_json(hits)
            return
        table = Table("seq", "role", "text")
        table.columns.insert(0, _id_column("conversation"))
        for m in hits:
            table.add_row(safe(m.conversation_id), str(m.seq), safe(m.role), safe(m.text[:120]))
        console.print(table)
