"""The interactive session of ``convo chat``: a read-eval-print loop over :class:`~convo.Chat`.

Each line typed is a turn (streamed to the terminal); lines starting with
``/`` are commands. A failed turn prints its error and the session goes on;
Ctrl-C during a reply stops it (the run is recorded as ``cancelled``);
end of input (Ctrl-D) or ``/quit`` ends the session.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from .._exceptions import ConvoError
from ._common import console
from ._context import _report_table
from ._turn_view import run_line, turn_summary, visible
from ._turns import print_reply, stream_turn

if TYPE_CHECKING:
    from .._client.client import OpenAIClient
    from .._context.report import ContextReport
    from .._store.store import Store
    from .._turns.chat import Chat
    from ._turns import TurnSettings

__all__ = ["Session"]

HELP = """\
commands:
  /report                    the context report of the last turn (what was kept, dropped, tokens)
  /regenerate                a new reply to the last user message (the old one stays on its branch)
  /fork [SEQ]                continue in a new conversation sharing this one's history (up to SEQ)
  /model NAME                switch the model
  /mode chat|completion [TEMPLATE]   switch how the conversation is sent
  /branches                  this thread's branches (* marks where turns go)
  /switch BRANCH             make BRANCH (an id from /branches) current
  /runs                      the latest requests of the current branch
  /help                      this list
  /quit                      end the session (Ctrl-D too)
a line starting with // is sent as a message starting with /"""


class Session:
    """One ``convo chat`` session on a thread (its root conversation id)."""

    def __init__(
        self,
        store: Store,
        client: OpenAIClient,
        conversation_id: str,
        settings: TurnSettings,
        *,
        owner: str | None,
    ) -> None:
        self.store = store
        self.client = client
        self.thread = conversation_id
        self.settings = settings
        self.owner = owner
        self.chat: Chat = settings.chat(store, client)
        self.report: ContextReport | None = None
        self.commands: dict[str, Callable[[list[str]], bool]] = {
            "/report": self._report,
            "/regenerate": self._regenerate,
            "/fork": self._fork,
            "/model": self._model,
            "/mode": self._mode,
            "/branches": self._branches,
            "/switch": self._switch,
            "/runs": self._runs,
            "/help": self._help,
            "/quit": lambda _: False,
            "/exit": lambda _: False,
        }

    # --- the loop ------------------------------------------------------------------------

    def run(self, *, created: bool) -> None:
        if sys.stdin.isatty():
            try:
                import readline  # noqa: F401 - line editing and history for input()
            except ImportError:
                pass
        what = "new conversation" if created else "conversation"
        console.print(f"{what} {self.thread} · {self._target()} · /help for commands, "
                      "Ctrl-D to quit", highlight=False, soft_wrap=True, markup=False)
        while True:
            try:
                line = input("you> ")
            except EOFError:
                console.out("", highlight=False)
                return
            except KeyboardInterrupt:
                console.out("", highlight=False)
                return
            line = line.strip()
            if not line:
                continue
            if line.startswith("/") and not line.startswith("//"):
                if not self._command(line):
                    return
            else:
                self._turn(line[1:] if line.startswith("//") else line)

    def _command(self, line: str) -> bool:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            _error(f"cannot read the command: {exc}")
            return True
        handler = self.commands.get(words[0])
        if handler is None:
            _error(f"unknown command {words[0]}: /help lists them")
            return True
        try:
            return handler(words[1:])
        except _Usage as exc:
            _error(f"usage: {exc}")
        except ConvoError as exc:
            _error(f"{type(exc).__name__}: {exc}")
        except KeyboardInterrupt:
            _error("interrupted")
        return True

    def _turn(self, text: str) -> None:
        console.out("assistant> ", end="", highlight=False)
        try:
            result = stream_turn(self.chat, self.thread, text, owner=self.owner, key=None,
                                 show=True)
        except ConvoError as exc:
            console.out("", highlight=False)
            _error(f"{type(exc).__name__}: {exc}")
            return
        except KeyboardInterrupt:
            console.out("", highlight=False)
            _error("interrupted: the reply was not stored (a request in flight: its run says cancelled)")
            return
        self.report = result.report
        print_reply(result, streamed=True)
        console.print(turn_summary(result, self.thread), highlight=False, soft_wrap=True)

    # --- commands ------------------------------------------------------------------------

    def _report(self, args: list[str]) -> bool:
        if self.report is None:
            console.print("no turn in this session yet", highlight=False)
        else:
            console.print(_report_table(self.report))
        return True

    def _regenerate(self, args: list[str]) -> bool:
        result = self.chat.regenerate(self.thread, owner=self.owner)
        self.report = result.report
        console.out("assistant> ", end="", highlight=False)
        print_reply(result, streamed=False)
        console.print(turn_summary(result, self.thread), highlight=False, soft_wrap=True)
        return True

    def _fork(self, args: list[str]) -> bool:
        if len(args) > 1 or (args and not args[0].isdigit()):
            raise _Usage("/fork [SEQ]")
        at = int(args[0]) if args else None
        current = self._current()
        fork = self.store.fork(current, at=at, owner=self.owner)
        self.thread = fork.id
        console.print(f"forked {current} at seq {fork.fork_seq}: now in conversation {fork.id}",
                      highlight=False, soft_wrap=True, markup=False)
        return True

    def _model(self, args: list[str]) -> bool:
        if len(args) != 1:
            raise _Usage("/model NAME")
        self._configure(replace(self.settings, model=args[0]))
        return True

    def _mode(self, args: list[str]) -> bool:
        if not args or args[0] not in ("chat", "completion") or len(args) > 2:
            raise _Usage("/mode chat|completion [TEMPLATE]")
        template = args[1] if len(args) == 2 else None
        self._configure(replace(self.settings, mode=args[0], template=template))
        return True

    def _branches(self, args: list[str]) -> bool:
        for b in self.chat.branches(self.thread, owner=self.owner):
            c = b.conversation
            where = "root" if c.branch_kind is None else f"{c.branch_kind} at seq {c.fork_seq}"
            last = b.last_message
            preview = "" if last is None else f"  {last.role}: {last.text[:50]}"
            console.print(f"{'*' if b.current else ' '} {c.id}  {where}  {c.last_seq} messages"
                          + visible(preview), highlight=False, soft_wrap=True, markup=False)
        return True

    def _switch(self, args: list[str]) -> bool:
        if len(args) != 1:
            raise _Usage("/switch BRANCH (an id from /branches)")
        self.chat.switch_branch(self.thread, args[0], owner=self.owner)
        console.print(f"turns now go to {visible(args[0])}", highlight=False, soft_wrap=True, markup=False)
        return True

    def _runs(self, args: list[str]) -> bool:
        current = self._current()
        page = self.store.list_runs(current, owner=self.owner, limit=10)
        console.print(f"latest runs of {current}:", highlight=False, soft_wrap=True, markup=False)
        for run in page.items:
            console.print(run_line(run), highlight=False, soft_wrap=True, markup=False)
        return True

    def _help(self, args: list[str]) -> bool:
        console.out(HELP, highlight=False)
        return True

    # --- helpers -------------------------------------------------------------------------

    def _configure(self, settings: TurnSettings) -> None:
        # Build first: a bad model or template leaves the session as it was.
        self.chat = settings.chat(self.store, self.client)
        self.settings = settings
        console.print(f"now: {self._target()}", highlight=False, soft_wrap=True, markup=False)

    def _target(self) -> str:
        s = self.settings
        target = f"model {s.model} ({s.mode}"
        return visible(target + (f", template {s.template})" if s.template else ")"))

    def _current(self) -> str:
        conversation = self.store.get_conversation(self.thread, owner=self.owner)
        return conversation.current_branch_id or conversation.id


class _Usage(Exception):
    """A command was typed with the wrong arguments; the message is its usage."""


def _error(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"error: {visible(message)}\n")
    sys.stderr.flush()
