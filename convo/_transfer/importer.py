"""Import convo's native export format: every line checked first, then all or nothing.

Two passes over the file, one pure core (:class:`Importer`) run by
:func:`import_conversations` and :func:`import_conversations_async`:

1. **Validate** (a read-only plan): each record is parsed and checked with
   the store's own rules (:mod:`convo._transfer.native`: OpenAI's message rules,
   column types and sizes), then across records: duplicate ids (in the file
   and, when ids are kept, in the database), fork parents earlier in the file
   or in the database (with the parent's owner, and a fork point within it),
   sequence numbers continuing from the fork point without gaps, tool
   messages answering a call of the assistant message before them (through
   the fork lineage), summaries and replies within the conversation, and
   record counts (a cut file). Errors are collected with their line numbers;
   any error raises :class:`~convo.ImportValidationError` and nothing is written.
2. **Write** (one transaction): the rows go in batches, ids kept or mapped to
   new ones (``new_ids=True``: conversation ids, fork parents, branch
   pointers, run ids and run links, summary and message ids, consistently).
   A failure rolls everything back.

Memory stays flat in the file's size: records are read one line at a time,
and the ids the checks need (and the old -> new id maps) live in a private
temporary SQLite file, not in Python dicts. The second pass hashes the file
again and refuses to commit if it changed in between.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from .._exceptions import ImportValidationError, StoreInputError
from .._store import sql
from .._store.core import Op, Plan, _lineage, _read_segments
from .._store.lineage import Chain, chain_of, extend
from .._store.rows import new_conversation_id
from .._store.runs import R, new_run_id
from . import native

if TYPE_CHECKING:
    from .._store.async_store import AsyncStore
    from .._store.store import Store

__all__ = ["ImportStats", "Importer", "import_conversations", "import_conversations_async"]

C, M, TK, S = sql.C, sql.M, sql.TK, sql.S

MAX_ERRORS: Final = 100
_CHECK_BATCH: Final = 500  # ids per existence query
_BATCH: Final = 1000  # rows per write flush

Source = str | os.PathLike[str] | IO[bytes] | IO[str]


class ImportStats(BaseModel):
    """What an import wrote. ``id_map``: old -> new conversation ids (``new_ids=True`` only)."""

    model_config = ConfigDict(frozen=True)

    conversations: int = 0
    messages: int = 0
    summaries: int = 0
    runs: int = 0
    token_counts: int = 0
    id_map: dict[str, str] = Field(default_factory=dict)


class _Stop(Exception):
    """Too many errors: validation ends early."""


# --- the scratch index -----------------------------------------------------------------------


class _Index:
    """Ids seen in the file and old -> new id maps, in a private temporary SQLite file.

    An empty file name makes SQLite create an on-disk database that it deletes
    on close; its page cache is bounded, so a file with millions of rows costs
    disk, not memory.
    """

    def __init__(self) -> None:
        self.db = sqlite3.connect("", isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-4096",
                       "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript("""
            CREATE TABLE conv (old TEXT PRIMARY KEY, new TEXT NOT NULL, owner TEXT,
                               last_seq INTEGER NOT NULL, parent TEXT, fork_seq INTEGER,
                               first_turn INTEGER, lineage TEXT, line INTEGER NOT NULL)
                               WITHOUT ROWID;
            CREATE TABLE msg (id INTEGER PRIMARY KEY, line INTEGER NOT NULL);
            CREATE TABLE summ (id INTEGER PRIMARY KEY, cid TEXT NOT NULL, new INTEGER,
                               line INTEGER NOT NULL);
            CREATE TABLE run (old TEXT PRIMARY KEY, new TEXT NOT NULL, line INTEGER NOT NULL)
                WITHOUT ROWID;
            -- tool calls left open by an assistant message: [start, stop) in seqs
            CREATE TABLE calls (cid TEXT NOT NULL, start INTEGER NOT NULL, stop INTEGER,
                                ids TEXT NOT NULL, PRIMARY KEY (cid, start)) WITHOUT ROWID;
        """)

    def close(self) -> None:
        self.db.close()

    def add(self, table: str, rows: list[tuple[Any, ...]]) -> list[tuple[Any, int]]:
        """Insert rows whose first column is an id and last a line; the duplicates
        come back as ``(id, line where it was first seen)``."""
        if not rows:
            return []
        marks = ",".join("?" * len(rows[0]))
        before = self.db.total_changes
        self.db.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", rows)
        if self.db.total_changes - before == len(rows):
            return []
        key = "old" if table in ("conv", "run") else "id"
        dups = []
        seen = set()
        for row in rows:
            first = self.db.execute(f"SELECT line FROM {table} WHERE {key} = ?", (row[0],)).fetchone()
            if first[0] != row[-1] or row[0] in seen:
                dups.append((row[0], first[0]))
            seen.add(row[0])
        return dups

    def conversation(self, old: str) -> tuple[str, str | None, int, str | None, int | None, int | None] | None:
        """(new id, owner, last_seq, parent, fork_seq, first_turn) of a conversation in the file."""
        found = self.db.execute(
            "SELECT new, owner, last_seq, parent, fork_seq, first_turn FROM conv WHERE old = ?",
            (old,),
        ).fetchone()
        return None if found is None else tuple(found)

    def lineage(self, old: str) -> list[Any] | None:
        """The lineage to store for a conversation of the file (in new ids)."""
        found = self.db.execute("SELECT lineage FROM conv WHERE old = ?", (old,)).fetchone()
        return None if found is None or found[0] is None else list(json.loads(found[0]))

    def new_conversation_id(self, old: str | None) -> str | None:
        if old is None:
            return None
        found = self.db.execute("SELECT new FROM conv WHERE old = ?", (old,)).fetchone()
        return old if found is None else str(found[0])

    def first_turn(self, old: str, seq: int | None) -> None:
        self.db.execute("UPDATE conv SET first_turn = ? WHERE old = ?", (seq, old))

    def open_calls(self, cid: str, seq: int) -> list[str] | None:
        found = self.db.execute(
            "SELECT ids FROM calls WHERE cid = ? AND start <= ? AND (stop IS NULL OR stop > ?) "
            "ORDER BY start DESC LIMIT 1", (cid, seq, seq),
        ).fetchone()
        return None if found is None else list(json.loads(found[0]))

    def add_calls(self, cid: str, start: int, stop: int | None, ids: list[str]) -> None:
        self.db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?)",
                        (cid, start, stop, json.dumps(ids)))

    def summary(self, old: int) -> tuple[str, int | None] | None:
        found = self.db.execute("SELECT cid, new FROM summ WHERE id = ?", (old,)).fetchone()
        return None if found is None else (found[0], found[1])

    def set_summary(self, old: int, new: int) -> None:
        self.db.execute("UPDATE summ SET new = ? WHERE id = ?", (new, old))

    def new_run_id(self, old: str | None) -> str | None:
        if old is None:
            return None
        found = self.db.execute("SELECT new FROM run WHERE old = ?", (old,)).fetchone()
        return old if found is None else str(found[0])

    def id_map(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT old, new FROM conv"))


# --- the source ---------------------------------------------------------------------------------


class _Lines:
    """The import file, readable twice, one line at a time, with a running hash."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.digest = ""

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        h = hashlib.blake2b(digest_size=16)
        try:
            handle = open(self.path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise StoreInputError(f"cannot read {self.path!r}: {exc.strerror}") from None
        with handle:
            for number, raw in enumerate(handle, 1):
                h.update(raw)
                if raw.strip():
                    yield number, raw
        self.digest = h.hexdigest()


@contextmanager
def _lines(source: Source) -> Iterator[_Lines]:
    """A path as is; a stream is copied to a temporary file first (it is read twice)."""
    if isinstance(source, (str, os.PathLike)):
        yield _Lines(os.fspath(source))
        return
    with tempfile.NamedTemporaryFile(prefix="convo-import-", suffix=".jsonl") as tmp:
        if isinstance(source, io.TextIOBase) or isinstance(source.read(0), str):
            with open(tmp.name, "w", encoding="utf-8", newline="") as out:
                shutil.copyfileobj(source, out)  # type: ignore[misc]
        else:
            shutil.copyfileobj(source, tmp)  # type: ignore[misc]
            tmp.flush()
        yield _Lines(tmp.name)


# --- pass 1: validation ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Conv:
    """What validation tracks of the conversation being read (a few numbers)."""

    id: str
    line: int
    fork_seq: int
    last_seq: int
    counts: dict[str, int]
    damaged: bool = False
    next_seq: int = 1
    section: int = 0  # 0 messages, 1 summaries, 2 runs: their order in the file
    seen: dict[str, int] = field(default_factory=lambda: {"messages": 0, "summaries": 0, "runs": 0})
    open_calls: set[str] | None = None  # None: inherited from the parent, not looked up yet
    calls_start: int | None = None  # seq of the assistant message whose calls are open
    calls: list[str] = field(default_factory=list)
    first_turn: int | None = None


_SECTIONS: Final = ("messages", "summaries", "runs")
_ENVELOPE: Final = frozenset({"format", "version", "type"})
_CONVERSATION_KEYS: Final = _ENVELOPE | {"conversation", "counts", *_SECTIONS}
_PART_KEYS: Final = _ENVELOPE | {"conversation_id", *_SECTIONS}


def _exists_stmt(table: sa.Table, column: sa.Column[Any]) -> sa.Select[Any]:
    return sa.select(column).where(column.in_(sa.bindparam("ids", expanding=True)))


_EXISTS = {
    "conversation": _exists_stmt(C, C.c.id),
    "message": _exists_stmt(M, M.c.id),
    "summary": _exists_stmt(S, S.c.id),
    "run": _exists_stmt(R, R.c.id),
}
_PARENT = sa.select(C.c.owner, C.c.last_seq, C.c.parent_id, C.c.fork_seq, C.c.lineage).where(
    C.c.id == sa.bindparam("cid"))
# One cached statement whatever the number of pairs (an expanding parameter).
_MESSAGE_IDS = sa.select(M.c.conversation_id, M.c.seq, M.c.id).where(
    sa.tuple_(M.c.conversation_id, M.c.seq).in_(sa.bindparam("pairs", expanding=True))
)


class Importer:
    """The pure core of an import: :meth:`validate` and :meth:`write` are store plans.

    Both read ``lines`` (pairs of line number and raw bytes) themselves; the
    shells give them the file and run them, ``validate`` without a
    transaction, ``write`` in one.
    """

    def __init__(self, *, new_ids: bool, dialect: str, max_errors: int = MAX_ERRORS) -> None:
        self.new_ids = new_ids
        self.dialect = dialect
        self.max_errors = max_errors
        self.index = _Index()
        self.errors: list[tuple[int, str]] = []
        self._pending: dict[str, list[tuple[Any, int]]] = {k: [] for k in _EXISTS}
        self.digest = ""

    def close(self) -> None:
        self.index.close()

    def _error(self, line: int, message: str) -> None:
        self.errors.append((line, message))
        if len(self.errors) >= self.max_errors:
            raise _Stop

    # -- pass 1 ----------------------------------------------------------------------------

    def validate(self, lines: _Lines) -> Plan[None]:
        """Check every line; raise :class:`~convo.ImportValidationError` listing what is wrong."""
        cur: _Conv | None = None
        try:
            for number, raw in lines:
                try:
                    obj = json.loads(raw)
                except ValueError as exc:
                    self._error(number, f"not valid JSON: {exc}")
                    if cur is not None:
                        cur.damaged = True
                    continue
                kind = self._envelope(number, obj)
                if kind == "conversation":
                    if cur is not None:
                        self._finish(cur)
                    cur = yield from self._conversation(number, obj)
                elif kind == "part":
                    if cur is not None and cur.damaged and obj.get("conversation_id") == cur.id:
                        continue  # its conversation record was already reported
                    if cur is None or obj.get("conversation_id") != cur.id or not any(
                        cur.seen[k] < cur.counts.get(k, 0) for k in _SECTIONS
                    ):
                        self._error(number, "a part record must directly follow its conversation "
                                            "record (or its previous part) while items remain")
                        continue
                    yield from self._items(number, obj, cur)
                elif cur is not None:
                    cur.damaged = True
            if cur is not None:
                self._finish(cur)
            yield from self._check_pending(force=True)
        except _Stop:
            raise ImportValidationError(self._sorted(), more=True) from None
        self.digest = lines.digest
        if self.errors:
            raise ImportValidationError(self._sorted())

    def _sorted(self) -> list[tuple[int, str]]:
        return sorted(self.errors, key=lambda e: e[0])  # stable: a line's errors keep their order

    def _envelope(self, line: int, obj: Any) -> str | None:
        if not isinstance(obj, dict):
            self._error(line, "a record must be a JSON object")
            return None
        if obj.get("format") != native.FORMAT:
            self._error(line, f"not a convo native record (format must be {native.FORMAT!r})")
            return None
        if obj.get("version") != native.VERSION:
            self._error(line, f"unsupported version {obj.get('version')!r}: this convo reads "
                              f"version {native.VERSION}")
            return None
        kind = obj.get("type")
        allowed = {"conversation": _CONVERSATION_KEYS, "part": _PART_KEYS}.get(str(kind))
        if allowed is None:
            self._error(line, "type must be 'conversation' or 'part'")
            return None
        unknown = obj.keys() - allowed
        if unknown:
            self._error(line, f"unknown fields: {', '.join(sorted(unknown))}")
            return None
        return str(kind)

    def _conversation(self, line: int, obj: dict[str, Any]) -> Plan[_Conv]:
        counts = obj.get("counts")
        try:
            cols = native.conversation_columns(obj.get("conversation"))
            if not isinstance(counts, dict) or set(counts) != set(_SECTIONS) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()
            ):
                raise native.RecordError("counts must give messages, summaries and runs (>= 0)")
        except native.RecordError as exc:
            self._error(line, str(exc))
            return _Conv(id="", line=line, fork_seq=0, last_seq=0, counts={}, damaged=True)
        cid, parent, fork_seq = cols["id"], cols["parent_id"], cols["fork_seq"]
        conv = _Conv(id=cid, line=line, fork_seq=fork_seq or 0, last_seq=cols["last_seq"],
                     counts=counts, next_seq=(fork_seq or 0) + 1)
        conv.open_calls = None if fork_seq else set()
        chain = None
        if parent is not None:
            found = self.index.conversation(parent)
            if found is not None:
                parent_owner, parent_last = found[1], found[2]
                chain = extend(found[0], fork_seq, self.index.lineage(parent) or ())
            else:
                row = yield Op(_PARENT, {"cid": parent}, "first")
                if row is None:
                    self._error(line, f"conversation {cid!r}: fork parent {parent!r} is neither "
                                      "earlier in the file nor in the database")
                    conv.damaged = True
                    parent_owner, parent_last = cols["owner"], fork_seq
                else:
                    parent_owner, parent_last = row.owner, row.last_seq
                    up: Chain = ()
                    if row.parent_id is not None:
                        up = yield from chain_of(row.parent_id, row.fork_seq, row.lineage)
                    chain = extend(parent, fork_seq, up)
            if fork_seq > parent_last:
                self._error(line, f"conversation {cid!r}: fork_seq {fork_seq} is past its "
                                  f"parent's last message ({parent_last})")
            if parent_owner != cols["owner"]:
                self._error(line, f"conversation {cid!r}: a fork has its parent's owner "
                                  f"({parent_owner!r}), not {cols['owner']!r}")
        new = new_conversation_id() if self.new_ids else cid
        for dup, first in self.index.add(
            "conv", [(cid, new, cols["owner"], cols["last_seq"], parent, fork_seq, None,
                      None if chain is None else json.dumps(chain), line)]
        ):
            self._error(line, f"duplicate conversation id {dup!r} (first on line {first})")
            conv.damaged = True
        self._pending["conversation"].append((cid, line))
        yield from self._items(line, obj, conv)
        return conv

    def _items(self, line: int, obj: dict[str, Any], conv: _Conv) -> Plan[None]:
        if conv.damaged and not conv.id:
            return
        messages, summaries, runs = (obj.get(k) for k in _SECTIONS)
        if not (isinstance(messages, list) and isinstance(summaries, list)
                and isinstance(runs, list)):
            self._error(line, "messages, summaries and runs must be lists")
            conv.damaged = True
            return
        ids: list[tuple[Any, ...]] = []
        for item in messages:
            yield from self._message(line, item, conv, ids)
        self._duplicates(line, "msg", "message", ids)
        ids = []
        for item in summaries:
            self._summary(line, item, conv, ids)
        self._duplicates(line, "summ", "summary", ids)
        ids = []
        for item in runs:
            self._run(line, item, conv, ids)
        self._duplicates(line, "run", "run", ids)
        yield from self._check_pending(force=False)

    def _duplicates(self, line: int, table: str, what: str, rows: list[tuple[Any, ...]]) -> None:
        for dup, first in self.index.add(table, rows):
            where = "earlier on this line" if first == line else f"first on line {first}"
            self._error(line, f"duplicate {what} id {dup!r} ({where})")

    def _section(self, line: int, conv: _Conv, section: int, what: str) -> bool:
        if conv.section > section:
            self._error(line, f"conversation {conv.id!r}: {what} after "
                              f"{_SECTIONS[conv.section]} (order: messages, summaries, runs)")
            return False
        conv.section = section
        conv.seen[_SECTIONS[section]] += 1
        if conv.seen[_SECTIONS[section]] > conv.counts[_SECTIONS[section]]:
            self._error(line, f"conversation {conv.id!r}: more {_SECTIONS[section]} than "
                              f"its counts say ({conv.counts[_SECTIONS[section]]})")
            conv.damaged = True
            return False
        return True

    def _message(self, line: int, item: Any, conv: _Conv, ids: list[tuple[Any, ...]]) -> Plan[None]:
        if not self._section(line, conv, 0, "a message"):
            return
        try:
            cols, _tokens = native.message_columns(item)
        except native.RecordError as exc:
            self._error(line, f"conversation {conv.id!r}: {exc}")
            conv.damaged = True
            return
        seq, role = cols["seq"], cols["role"]
        if seq != conv.next_seq:
            self._error(line, f"conversation {conv.id!r}: message seq {seq} where {conv.next_seq} "
                              "comes next (own messages continue from the fork point, no gaps)")
            conv.damaged = True
            return
        conv.next_seq += 1
        if seq > conv.last_seq:
            self._error(line, f"conversation {conv.id!r}: message seq {seq} is past its "
                              f"last_seq {conv.last_seq}")
        ids.append((cols["id"], line))
        self._pending["message"].append((cols["id"], line))
        if role == "tool":
            if conv.open_calls is None:
                conv.open_calls = yield from self._inherited_calls(conv)
            if cols["tool_call_id"] not in conv.open_calls:
                self._error(line, f"conversation {conv.id!r}: message {seq}: tool result for "
                                  f"call {cols['tool_call_id']!r}, which no assistant message "
                                  "before it made (a tool message needs its call)")
        elif role in ("user", "assistant"):
            self._close_calls(conv, seq)
            if conv.first_turn is None:
                conv.first_turn = seq
            calls = [c["id"] for c in cols["tool_calls"] or ()]
            conv.open_calls = set(calls)
            if calls:
                conv.calls_start, conv.calls = seq, calls

    def _close_calls(self, conv: _Conv, stop: int | None) -> None:
        if conv.calls_start is not None:
            self.index.add_calls(conv.id, conv.calls_start, stop, conv.calls)
            conv.calls_start = None

    def _inherited_calls(self, conv: _Conv) -> Plan[set[str]]:
        """The calls still open at a fork point: a fork may start with the tool
        results of a call its parent made."""
        found = self.index.conversation(conv.id)
        assert found is not None
        cid, seq = found[3], conv.fork_seq
        while cid is not None:
            known = self.index.conversation(cid)
            if known is None:
                return (yield from self._stored_calls(cid, seq))
            calls = self.index.open_calls(cid, seq)
            if calls is not None:
                return set(calls)
            first_turn = known[5]
            if first_turn is not None and first_turn <= seq:
                return set()
            cid, seq = known[3], min(seq, known[4] or 0)
        return set()

    def _stored_calls(self, cid: str, seq: int) -> Plan[set[str]]:
        """The same, for a parent in the database: its newest user or assistant message."""
        lineage = yield from _lineage(cid, None)
        before = seq + 1
        while True:
            rows = yield from _read_segments(lineage, after=None, before=before, limit=100,
                                             newest_first=True)
            for row in rows:
                role, tool_calls = row[3], row[7]
                if role == "user":
                    return set()
                if role == "assistant":
                    return {c["id"] for c in tool_calls or ()}
            if len(rows) < 100:
                return set()
            before = rows[-1][2]

    def _summary(self, line: int, item: Any, conv: _Conv, ids: list[tuple[Any, ...]]) -> None:
        if not self._section(line, conv, 1, "a summary"):
            return
        try:
            cols = native.summary_columns(item)
        except native.RecordError as exc:
            self._error(line, f"conversation {conv.id!r}: {exc}")
            return
        if cols["end_seq"] > conv.last_seq:
            self._error(line, f"conversation {conv.id!r}: summary {cols['id']} ends at "
                              f"{cols['end_seq']}, past the last message ({conv.last_seq})")
        ids.append((cols["id"], conv.id, None, line))
        self._pending["summary"].append((cols["id"], line))

    def _run(self, line: int, item: Any, conv: _Conv, ids: list[tuple[Any, ...]]) -> None:
        if not self._section(line, conv, 2, "a run"):
            return
        try:
            cols, reply_seq = native.run_columns(item)
        except native.RecordError as exc:
            self._error(line, f"conversation {conv.id!r}: {exc}")
            return
        what = f"conversation {conv.id!r}: run {cols['id']!r}"
        if reply_seq is not None and not conv.fork_seq < reply_seq <= conv.last_seq:
            self._error(line, f"{what}: reply_seq {reply_seq} is not a message of this conversation")
        if self.new_ids and cols["reply_message_id"] is not None and reply_seq is None:
            self._error(line, f"{what}: its reply message is not in its conversation, so it "
                              "cannot be given a new id (import without new_ids)")
        if self.new_ids and cols["summary_id"] is not None and (
            self.index.summary(cols["summary_id"]) is None
        ):
            self._error(line, f"{what}: summary {cols['summary_id']} is not earlier in the file, "
                              "so it cannot be given a new id (import without new_ids)")
        ids.append((cols["id"], new_run_id() if self.new_ids else cols["id"], line))
        self._pending["run"].append((cols["id"], line))

    def _finish(self, conv: _Conv) -> None:
        if not conv.id:
            return
        self._close_calls(conv, None)
        self.index.first_turn(conv.id, conv.first_turn)
        if conv.damaged:
            return
        for section in _SECTIONS:
            if conv.seen[section] != conv.counts[section]:
                self._error(conv.line, f"conversation {conv.id!r}: the file holds "
                                       f"{conv.seen[section]} {section}, its counts say "
                                       f"{conv.counts[section]} (a cut or edited file?)")
        if conv.next_seq - 1 != conv.last_seq:
            self._error(conv.line, f"conversation {conv.id!r}: its own messages end at "
                                   f"{conv.next_seq - 1}, its last_seq is {conv.last_seq}")

    def _check_pending(self, *, force: bool) -> Plan[None]:
        """Ids kept as they are must not exist in the database yet."""
        for kind, pending in self._pending.items():
            if not pending or (not force and len(pending) < _CHECK_BATCH):
                continue
            self._pending[kind] = []
            if self.new_ids:
                continue  # every row gets a fresh id
            lines = dict(pending)
            for row in (yield Op(_EXISTS[kind], {"ids": list(lines)})):
                self._error(lines[row[0]], f"{kind} id {row[0]!r} already exists in the "
                                           "database (import with new_ids=True, `convo import --new-ids`, to add a copy)")

    # -- pass 2 ----------------------------------------------------------------------------

    def write(self, lines: _Lines) -> Plan[ImportStats]:
        """Write every record (the file was validated); one transaction, all or nothing."""
        batch = _Batch()
        stats = dict.fromkeys(("conversations", "messages", "summaries", "runs", "token_counts"), 0)
        cid = new_cid = ""
        for number, raw in lines:
            obj = json.loads(raw)
            try:
                if obj["type"] == "conversation":
                    cols = native.conversation_columns(obj["conversation"])
                    cid = cols["id"]
                    new_cid = self.index.new_conversation_id(cid) or cid
                    cols["id"] = new_cid
                    for key in ("parent_id", "branch_of", "current_branch_id"):
                        cols[key] = self.index.new_conversation_id(cols[key])
                    cols["lineage"] = self.index.lineage(cid)
                    batch.conversations.append(cols)
                    stats["conversations"] += 1
                self._stage(number, obj, cid, new_cid, batch, stats)
            except native.RecordError as exc:  # the file changed since validation
                raise ImportValidationError([(number, str(exc))]) from None
            if batch.size() >= _BATCH:
                yield from self._flush(batch)
        yield from self._flush(batch)
        if lines.digest != self.digest:
            raise ImportValidationError(
                [(0, "the file changed between validation and writing; run the import again")]
            )
        if not self.new_ids and self.dialect == "postgresql":
            for table in ("messages", "summaries"):
                yield Op(_setval(table), None, "none")
        return ImportStats(**stats, id_map=self.index.id_map() if self.new_ids else {})

    def _stage(self, line: int, obj: dict[str, Any], cid: str, new_cid: str, batch: _Batch,
               stats: dict[str, int]) -> None:
        for item in obj["messages"]:
            cols, tokens = native.message_row(item)
            cols["conversation_id"] = new_cid
            seq = cols["seq"]
            if self.new_ids:
                del cols["id"]
            batch.messages.append(cols)
            batch.lines.append(line)
            for encoding, n in tokens.items():
                batch.tokens.append((new_cid, seq, cols.get("id"), encoding, n))
            stats["messages"] += 1
            stats["token_counts"] += len(tokens)
        for item in obj["summaries"]:
            cols = native.summary_columns(item)
            cols["conversation_id"] = new_cid
            batch.summaries.append(cols)
            stats["summaries"] += 1
        for item in obj["runs"]:
            cols, reply_seq = native.run_columns(item)
            cols["conversation_id"] = new_cid
            cols["id"] = self.index.new_run_id(cols["id"])
            for key in ("reproduces_id", "replays_id"):
                cols[key] = self.index.new_run_id(cols[key])
            batch.runs.append((line, cols, reply_seq))
            stats["runs"] += 1

    def _flush(self, batch: _Batch) -> Plan[None]:
        first = batch.lines[0] if batch.lines else (batch.runs[0][0] if batch.runs else 0)
        try:
            if batch.conversations:
                yield Op(sql.INSERT_CONVERSATION, batch.conversations, "none")
            if batch.messages:
                insert = sql.insert_new_message(self.dialect, False) if self.new_ids else (
                    sql.INSERT_PLAIN)
                # the driver's executemany (as Store.append_many writes): SQLAlchemy's
                # per-row parameter processing cost more than the insert itself
                yield Op(insert, batch.messages, "none", driver=True)
            ids: dict[tuple[str, int], int] = {}
            wanted = {(t[0], t[1]) for t in batch.tokens} if self.new_ids else set()
            wanted |= {(r[1]["conversation_id"], seq) for r in batch.runs if (seq := r[2]) is not None}
            if wanted:
                pairs = sorted(wanted)
                for start in range(0, len(pairs), _CHECK_BATCH):
                    chunk = pairs[start:start + _CHECK_BATCH]
                    for row in (yield Op(_MESSAGE_IDS, {"pairs": chunk})):
                        ids[(row[0], row[1])] = row[2]
            if batch.tokens:
                rows = [{"conversation_id": c, "message_id": ids[(c, s)] if self.new_ids else mid,
                         "encoding": e, "tokens": n} for c, s, mid, e, n in batch.tokens]
                yield Op(sa.insert(TK), rows, "none")
            for cols in batch.summaries:
                old = cols["id"]
                if self.new_ids:
                    del cols["id"]
                    new = yield Op(sql.insert_summary(self.dialect), cols, "scalar")
                    self.index.set_summary(old, new)
                else:
                    yield Op(sa.insert(S), cols, "none")
            runs = []
            for line, cols, reply_seq in batch.runs:
                if reply_seq is not None:
                    found = ids.get((cols["conversation_id"], reply_seq))
                    if self.new_ids:
                        cols["reply_message_id"] = found
                    elif found != cols["reply_message_id"]:
                        raise ImportValidationError([(line, (
                            f"run {cols['id']!r}: reply_message_id {cols['reply_message_id']} is "
                            f"not message {reply_seq} of its conversation (id {found})"))])
                if self.new_ids and cols["summary_id"] is not None:
                    known = self.index.summary(cols["summary_id"])
                    cols["summary_id"] = known[1] if known is not None else None
                runs.append(cols)
            if runs:
                yield Op(sa.insert(R), runs, "none")
        except IntegrityError as exc:
            last = max([*batch.lines, *(r[0] for r in batch.runs), first])
            raise ImportValidationError([(first, (
                f"the database refused lines {first}-{last}: {type(exc.orig).__name__}: "
                f"{str(exc.orig).splitlines()[0]} (did another writer add these ids meanwhile?)"
            ))]) from None
        batch.clear()


def _setval(table: str) -> sa.TextClause:
    """PostgreSQL: move an id sequence past rows inserted with explicit ids
    (never backwards: another session may hold higher values)."""
    seq = f"pg_get_serial_sequence('{table}', 'id')"
    return sa.text(
        f"SELECT setval({seq}, GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), "
        f"COALESCE(pg_sequence_last_value({seq}::regclass), 0), 1))"
    )


@dataclass(slots=True)
class _Batch:
    conversations: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    tokens: list[tuple[str, int, int | None, str, int]] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    runs: list[tuple[int, dict[str, Any], int | None]] = field(default_factory=list)

    def size(self) -> int:
        return (len(self.conversations) + len(self.messages) + len(self.tokens)
                + len(self.summaries) + len(self.runs))

    def clear(self) -> None:
        for items in (self.conversations, self.messages, self.lines, self.tokens,
                      self.summaries, self.runs):
            items.clear()


# --- the shells --------------------------------------------------------------------------------


def import_conversations(store: Store, source: Source, *, new_ids: bool = False) -> ImportStats:
    """Import a native export file (see :func:`~convo.export_conversations`): all or nothing.

    Args:
        store: the store to write to.
        source: a file path, or a binary or text stream (copied to a temporary
            file first: the file is read twice).
        new_ids: give every row a new id (conversations, messages, summaries,
            runs), keeping every reference between them (fork parents, branch
            pointers, run replies, summaries and links). Without it, ids are
            kept and must not exist in the database yet.

    Returns:
        What was written; ``id_map`` maps old to new conversation ids.

    Raises:
        ImportValidationError: the file has errors (``.errors``: line numbers and
            messages); nothing was written.
    """
    with _lines(source) as lines, _importer(new_ids, store.engine.dialect.name) as importer:
        store._run(importer.validate(lines), "read")
        return store._run(importer.write(lines), "write")


async def import_conversations_async(
    store: AsyncStore, source: Source, *, new_ids: bool = False
) -> ImportStats:
    """:func:`import_conversations` on an :class:`~convo.AsyncStore` (the file is read
    with plain file reads)."""
    with _lines(source) as lines, _importer(new_ids, store.engine.dialect.name) as importer:
        await store._run(importer.validate(lines), "read")
        return await store._run(importer.write(lines), "write")


@contextmanager
def _importer(new_ids: bool, dialect: str) -> Iterator[Importer]:
    importer = Importer(new_ids=new_ids, dialect=dialect)
    try:
        yield importer
    finally:
        importer.close()

