"""Mutation testing of convo's core modules with mutmut, one module at a time.

Run it through ``.ci/mutation`` (see docs/testing.md, "Mutation testing"):

    .ci/mutation                     # every module of MODULES, one after the other
    .ci/mutation _context.selection _client.retry   # some of them
    .ci/mutation --list              # the modules and the test files each is run against
    .ci/mutation --report            # the table of the last runs (build/mutation/*/summary.json)
    .ci/mutation --survivors _client.retry  # after adding tests: re-run only the last run's survivors
                                     # (and the mutants a run stopped by --minutes did not reach)

Each module is mutated in a scratch copy of the working tree (``build/mutation/<module>/``)
and every mutant is run against the module's own fast test files only, on SQLite only
(``-k "not postgresql"``: the parametrized PostgreSQL cases start a server, too slow to
repeat per mutant; the default test run covers PostgreSQL), except the modules in
WITH_POSTGRESQL, whose dialect-specific SQL only PostgreSQL runs; the pure cores in
SYNC_ONLY run the sync SQLite cases only. Hypothesis runs with a fixed
seed so two runs of the same code report the same numbers.

Score = killed / (mutants - equivalent). A timeout (the mutant loops forever) counts as
killed. Mutants that no mapped test reaches count as not killed. Equivalent mutants (no
test could tell them apart from the code) are listed in EQUIVALENT with a reason each,
keyed by the function and the mutated line, so they survive renumbering.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutation"
MIN_SCORE = 90.0
#: mutmut's time limit per mutant is (the mapped tests' measured time + 1 s) times this;
#: None: mutmut's default, 15 (see --timeout-multiplier)
TIMEOUT_MULTIPLIER: float | None = None

#: module -> the test files its mutants run against (fast ones, the module's own)
MODULES: dict[str, list[str]] = {
    "_context.selection": ["test_selection.py", "test_context_edges.py", "test_context.py",
                           "test_turn_build.py"],
    "_context.plan": ["test_context.py", "test_context_edges.py", "test_context_paths.py",
                      "test_context_floor.py", "test_context_as_of.py", "test_context_summaries.py",
                      "test_turn_build.py"],
    "_tokens.counter": ["test_tokens_rules.py", "test_tokens.py"],
    "_tokens.media": ["test_media_tokens.py", "test_tokens.py"],
    "_render.templates": ["test_templates_edges.py", "test_templates.py", "test_templates_hf.py",
                   "test_templates_forging.py"],
    "_render.jinja": ["test_jinja_config.py", "test_templates_hf.py", "test_templates.py",
               "test_templates_forging.py", "test_templates_sandbox.py"],
    "_client.retry": ["test_retry.py"],
    "_client.sse": ["test_sse.py", "test_client_stream.py"],
    "_client.stream": ["test_stream_assembly.py", "test_client_stream.py", "test_client_limits.py",
                       "test_client_deadlines.py"],
    "_client.errors": ["test_client_errors.py", "test_client.py", "test_client_stream.py",
                       "test_client_secrets.py", "test_client_limits.py", "test_client_hostile.py",
                       "test_client_deadlines.py"],
    "_store.core": ["test_store.py", "test_store_fork.py", "test_store_edges.py",
                    "test_context_edges.py", "test_store_hotpath.py", "test_store_lineage.py",
                    "test_store_damaged.py"],
    "_store.context": ["test_store.py", "test_store_fork.py", "test_context_reads.py",
                       "test_context_edges.py", "test_store_hotpath.py", "test_store_damaged.py"],
    "_store.sql": ["test_store.py", "test_store_fork.py", "test_store_edges.py",
                   "test_context_reads.py"],
    # turns, runs and replays: the pure cores run on SQLite, the store plans on both
    "_turns.plan": ["test_turns.py", "test_turns_failures.py", "test_turns_tools.py",
                   "test_turns_branches.py", "test_turn_hotpath.py"],
    "_turns.tools": ["test_turns_tools.py"],
    "_replay.plan": ["test_replay.py", "test_cli_replay.py"],
    "_replay.reproduce": ["test_reproduce.py", "test_cli_replay.py"],
    "_store.runs": ["test_runs_store.py", "test_store_hotpath.py", "test_store_damaged.py"],
    "_store.branches": ["test_turns_branches.py"],
    "_store.replays": ["test_replay.py", "test_cli_replay.py", "test_store_damaged.py"],
}

_CASELESS_HEADERS = "httpx.Headers are case-insensitive"
_REDUNDANT_KEY_CHECK = (
    "the two idempotency checks cover for each other (the key lookup, and the unique-key "
    "safety net): either one alone returns the stored message"
)
_RACE = "only a concurrent fork or delete between two statements reaches it: no deterministic test"
_DOUBLE_CHECK = (
    "the unlocked read is a fast path (the locked one finds the same counter); the locked "
    "re-read matters only when two threads race on a key's first counter"
)
_TRUTH = "only tested for truth: None and False alike"
_FAST_PATH = (
    "an inline fast path of a check: a mutant that narrows or disables it sends the value "
    "to the checking call, which gives the same answer (at the bounds too)"
)
_CHECKED_FIRST = (
    "the plan's @checked rules (title: _text, metadata: _json_object, owner: _short) refuse "
    "every value this check would, before the plan runs: its message is never seen"
)
_OWNER_CHECKED = (
    "_open_lineage runs only from _open, right after _open checked the owner on the same "
    "conversation row in the same transaction"
)
_LINEAGE_FIRST = (
    "dead branch: BuildIO, store_call's only caller, holds the lineage from Start's result "
    "before the plan yields any Tail, and no Tail has before None"
)
_SHELL_RAISES = (
    "which of TurnCancelled and the Sent's error the plan raises is not seen: the shells re-raise "
    "the error instead of TurnCancelled, and a Sent without one (the caller stopped reading a "
    "stream) is fed in by _unwind, which swallows TurnCancelled"
)
_UNREPORTED_REASON = (
    "a stop reason given with nothing dropped is never reported: result() says "
    "'history exhausted' whenever dropped_count is 0"
)

#: pure cores that both shells drive alike (the sync and async Chat / Replayer only add or
#: leave out ``await``): their mutants run the sync SQLite cases only (the ``sqlite-sync``
#: ids of the ``store`` fixture, over the in-process transport), a quarter of the cases
SYNC_ONLY = {"_turns.plan", "_turns.tools", "_replay.plan", "_replay.reproduce"}

#: modules whose mutants also run the PostgreSQL cases (dialect-specific SQL); each forked
#: test run then starts its own pgserver, a few seconds a mutant, so only where it matters
WITH_POSTGRESQL = {"_store.sql", "_store.core", "_store.context", "_store.runs", "_store.branches", "_store.replays"}

#: module -> [(function, mutated line as mutmut writes it, why no test can tell[, original line])]
EQUIVALENT: dict[str, list[tuple[str, ...]]] = {
    "_context.selection": [
        ("Selector.__init__", "self._have_current = None",
         "only read as `not self._have_current`: None and False alike"),
        ("Selector.__init__", 'self._dropped_through: int | None = ""',
         "never read before _finish sets it: result() needs done, and only _finish sets done"),
        *[("Selector.feed", f"self._finish(None, {reason})", _UNREPORTED_REASON)
          for reason in ("None", '"XXhistory exhaustedXX"', '"HISTORY EXHAUSTED"')],
        ("Selector._starts_history",
         "return sum(1 for s in self._pinned_seqs if s <= first) == first - 1",
         "first is a seq of the turn, never pinned (feed skips pinned seqs): s == first never counts"),
        ("Selector.feed", "turn, self._pending = self._pending, _Turn(None)",
         "the preamble is the last turn: selection finishes right after, the new pending turn is never used"),
        ("Selector._starts_history",
         "if first - 2 > len(self._pinned_seqs):  # (the usual answer, without the count)",
         ("only a shortcut: with fewer pinned seqs than seqs before first, the count below "
          "cannot reach first - 1 either, so it answers False too")),
        ("Selector._keep_current", "turn.items[0] = Item(msg, user.seq, cost, )",
         "Item.exact defaults to True, and only str content is truncated, whose count is always exact"),
        ("Selector._keep_current", "turn.cost = rest - cost",
         "after truncating, selection finishes at once: turn.cost feeds only counters nothing reads"),
        ("Selector._keep_current",
         'self._finish(user.seq - 1 if (user.seq > 1) or True else None, "budget")',
         "for user seq 1 it gives dropped_through 0: no seq <= 0, so dropped_count 0, reported as None"),
        ("Selector._keep_current",
         'self._finish(user.seq - 1 if user.seq >= 1 else None, "budget")',
         "for user seq 1 it gives dropped_through 0: no seq <= 0, so dropped_count 0, reported as None"),
    ],
    "_client.sse": [
        *[(f"SSEDecoder.{function}", "self._skip_lf = None", _TRUTH)
          for function in ("__init__", "feed", "flush")],
        *[(f"SSEDecoder.{function}", "self._skip_lf = True",
           "a dropped leading \\n is a blank line before any data: it dispatches nothing either way")
          for function in ("__init__", "flush")],
        *[("SSEDecoder.feed", f'if line[:{n}] == b"{prefix}":',
           "only skips the fast path: _field parses 'data: ...' lines the same way")
          for n, prefix in [(7, "data: "), (6, "XXdata: XX"), (6, "DATA: ")]],
        ("SSEDecoder.feed", 'data.append(line[6:].decode("UTF-8"))', "codec names are case-insensitive"),
        *[("SSEDecoder._field", f'{target} = value.decode("UTF-8")', "codec names are case-insensitive")
          for target in ("self._event", "self._last_id")],
        ("SSEDecoder._field", 'self._data.append(value.decode("UTF-8"))',
         "codec names are case-insensitive"),
        ("SSEDecoder.feed", 'data[0] if (len(data) == 1) and False else "\\n".join(data),',
         "joining one line gives that line"),
        ("SSEDecoder._dispatch", 'data=data[0] if (len(data) == 1) and False else "\\n".join(data),',
         "joining one line gives that line"),
        ("SSEDecoder._field", "if line[0] == 59:  # \":\" starts a comment (servers send them as keep-alives)",
         "a ';' line skipped as a comment names no known field: it is ignored either way"),
    ],
    "_render.templates": [
        ("_Builtin._control",
         "structure = analyze(lambda msgs, gen, tools: self._render(msgs, None, tools))",
         ("each built-in's generation cue is declared (Assistant:, <|im_start|>, Llama 3's "
          "header tokens): probes without it find the same control strings")),
        *[(f"_{cls}._render", "start = None", "messages[None:] is messages[0:]", "start = 0")
          for cls in ("Transcript", "Llama3")],
        ("_Transcript._render",
         "lines = [self._text(m)] if (m.content is not None or m.refusal) or True else []",
         "empty lines are dropped when the lines are joined"),
        ("_Llama3._render", 'system: str | None = ""',
         "the blank line _join puts after '' is stripped with the system text"),
        *[("_Inst._turns", f"turns = [(s, \"\\n\\n\".join(t)) for s, t in zip(sides, texts, {arg})]",
           "both lists have one entry per turn by construction")
          for arg in ("strict=None", "", "strict=False")],
        *[("_tool_names", code, "building the call-id -> name map when no tool message needs it changes nothing")
          for code in ('if any(m.role == "tool" or not m.name for m in messages):',
                       'if any(m.role != "tool" and not m.name for m in messages):')],
        ("get_template", 'source = path.read_text(encoding="UTF-8")', "codec names are case-insensitive"),
        ("get_template", "source = path.read_text(encoding=None)",
         "the machine's locale encoding is UTF-8 here (not killable on such a machine)"),
        ("*", "re:ensure_ascii=None\\)", "json.dumps tests ensure_ascii for truth: None and False alike"),
        ("_tool_name", 'call_id = m.tool_call_id or "XXXX"', "a tool message always has a tool_call_id"),
    ],
    "_render.jinja": [
        *[(function, code, "codec names are case-insensitive")
          for function, code in (
              ("_read_json", 'data = json.loads(path.read_text(encoding="UTF-8"))'),
              ("JinjaChatTemplate.from_tokenizer_config",
               'raw = (base_dir / "chat_template.jinja").read_text(encoding="UTF-8")'),
          )],
        *[(function, code, "the machine's locale encoding is UTF-8 here (not killable on such a machine)")
          for function, code in (
              ("_read_json", "data = json.loads(path.read_text(encoding=None))"),
              ("JinjaChatTemplate.from_tokenizer_config",
               'raw = (base_dir / "chat_template.jinja").read_text(encoding=None)'),
          )],
        ("*", r"re:neutralize_value\((tools|documents), control\) if \((tools|documents)\) or True",
         "neutralize_value(None) is None and neutralize_value([]) is []"),
        *[("JinjaChatTemplate.render", f"for m, s in zip(messages, safe, {arg})",
           "safe is made from messages, one for one")
          for arg in ("strict=None", "", "strict=False")],
        ("JinjaChatTemplate.__init__", 'self._lenient: ControlStrings | None = ""',
         "read only through _controls, after _analyze has set it"),
        ("JinjaChatTemplate._analyze",
         "self._lenient = control.without(parsed) if (parsed) or True else None",
         "control.without(nothing) holds the same strings: kept == safe, so the safe prompt is rendered"),
        ("template_messages", 'found = names.get(m.tool_call_id or "XXXX")',
         "a tool message always has a tool_call_id"),
    ],
    "_store.core": [
        # _insert's IntegrityError net (a key stored by a race between the lookup and the
        # INSERT): the lookup before it returns a stored key's message first
        *[("_insert", code, _REDUNDANT_KEY_CHECK) for code in (
            "if idempotency_key is not None:", "existing = None", "if existing is not None:",
            "return message_from_row(None)",
            r"re:^existing = yield Op\(", r"re:^driver=(None|False)\)$",
        )],
        ("_insert", ")", _REDUNDANT_KEY_CHECK, "driver=True)"),
        *[("append_current", code, _REDUNDANT_KEY_CHECK) for code in (
            "existing = None",
        )],
        ("append_current", 'existing = ""', "a dead store: both branches below set existing"),
        ("append_current", 'row = yield Op(sql.append_returning_seq(scoped, True), single, "first", )',
         "the DBAPI fast path is an optimization: SQLAlchemy rows read by position the same"),
        ("append_current", "lineage = yield from _lineage(cid, None)",
         "the counter update just found this branch in the owner's scope (scoped UPDATE)"),
        ("append_current", "return cid, (yield from _insert(cid, seq, msg, values, stamp, None, dialect))",
         ("_insert reads the key only in its IntegrityError net, which the key lookup just "
          "before leaves to a concurrent send of the same key: no deterministic test")),
        ("*", r're:yield Op\(.*, (None|"XXnoneXX"|"NONE")\)$',
         "a statement whose result is not read: every unknown fetch mode returns None"),
        ("*", r"re:driver=(None|False)\)|(\{\"cid\": conversation_id\}|params), \)+$",
         "the DBAPI fast path is an optimization: SQLAlchemy rows read by position the same"),
        ("newest_first", r"re:sa\.literal\(after\[[01]\], (None)?\)",
         ("SQLAlchemy infers the type from the value: the cursor's aware UTC datetime binds "
          "as the same text on SQLite (timestamptz on PostgreSQL), its id as the same string")),
        ("newest_first", "if keep is None and len(items) >= want or len(rows) < want:",
         ("without keep every row read is an item: a page is full (len(items) == want) or "
          "short, so the loop stops after it either way")),
        ("newest_first", "if keep is None or len(items) > want or len(rows) < want:",
         ("with want items kept, one more page read only adds items past the limit: the "
          "page and its cursor are the same")),
        *[("newest_first", code, "reading one more row (or all) gives the same page and cursor")
          for code in (r"re:\.limit\(None\)$", "want = min(limit, 2**62) + 2")],
        ("list_conversations", "if sql.needs_recheck(None, value):  # SQLite, an object or array value",
         ("rechecking on PostgreSQL too re-tests only rows the JSONB clause matched exactly, "
          "where json_same agrees with it")),
        ("list_conversations",
         r're:recheck\.append\(\(key, check_json\(value, (None|"XXmetadata filter valueXX"|"METADATA FILTER VALUE")\)\)\)$',
         _CHECKED_FIRST),
        ("list_conversations", "keep=keep if (recheck) or True else None,",
         ("with nothing to recheck keep keeps every row: the first page read is full or the "
          "last, so the loop stops after it as it does without keep")),
        ("get_message", r"re:limit=(None|2), newest_first=False|limit=1, newest_first=(None|True)",
         "the range seq - 1 < s < seq + 1 holds one row at most"),
        ("_read_segments", "if hi < lo:", "a segment with hi == lo reads no rows either way"),
        ("append_many", r"re:zip\(msgs, rows, ids, (strict=(None|False))?\)",
         "the three lists have the same length by construction"),
        ("append", r"re:^existing = ", _REDUNDANT_KEY_CHECK),
        ("search", r"re:stmt\.join\(C, (None)?\)",
         "SQLAlchemy infers the same join from the conversation_id foreign key"),
        ("search", "(M.c.conversation_id == cid) & (M.c.seq >= lo) & (M.c.seq <= hi)",
         "lo is 0 or a fork point, and a conversation's own rows start after its fork point"),
        *[("insert_message",
           f"values if (None not in values.values()) {op} else {{k: v for k, v in values.items() if v is not None}}",
           ("an optimization: the INSERT lists the NULL columns or leaves them out, and the "
            "row stored is the same (no column a message leaves NULL has a server default; "
            "pinned is always given)")) for op in ("and False", "or True")],
        ("insert_message",
         "values if None in values.values() else {k: v for k, v in values.items() if v is not None}",
         ("an optimization: the INSERT lists the NULL columns or leaves them out, and the "
          "row stored is the same (no column a message leaves NULL has a server default; "
          "pinned is always given)")),
        ("insert_message",
         r're:^return Op\(sql\.insert_new_message\(dialect\), given, (None|"XXscalarXX"|"SCALAR"), True\)$',
         ("on the DBAPI path (driver=True) a fetch mode other than all, first, none, rowcount "
          "and lastrowid reads the first value, as scalar does (driver.rows_as' default): the "
          "new id")),
        ("_fork_source", 'row = yield Op(sql.select_conversation(_scope(params, owner)), params, "first", )',
         "the DBAPI fast path is an optimization: SQLAlchemy rows read by position the same"),
        ("append", r're:_scope\(single, owner\)\), single, "first", (driver=(None|False)|\))$',
         "the DBAPI fast path is an optimization: SQLAlchemy rows read by position the same"),
        ("*", (r're:^(seq|last|top) = yield Op\(sql\.(bump_seq|MAX_MESSAGE_ID).*, '
               r'(None|"XXscalarXX"|"SCALAR"), (True|driver=True)\)$'),
         ("on the DBAPI path (driver=True) a fetch mode other than all, first, none, rowcount "
          "and lastrowid reads the first value, as scalar does (driver.rows_as' default)")),
        ("append", "yield from _insert(conversation_id, seq, msg, values, stamp, None, dialect)",
         ("_insert reads the key only in its IntegrityError net, which the key lookup just "
          "before leaves to a concurrent send of the same key: no deterministic test")),
        ("append", "message_id = yield insert_message(values, None)",
         ("reached only on SQLite (PostgreSQL without a key takes the one-statement path), "
          "and insert_new_message gives every dialect but postgresql SQLite's INSERT")),
        ("Lineage.live", "return [s for s in self.segments if s[2] >= s[1]]",
         ("a segment with hi == lo holds no rows: every reader of live() skips it or reads "
          "nothing from it (seq in (lo, hi])")),
        ("_lineage", "if row[1] is not None:",
         "parent_id and fork_seq are set together: a root has neither, a fork both"),
        ("append_many", "if len(values) <= width:",
         "a row with every column of the batch has none to fill: the loop below adds nothing"),
        ("append_many", r're:^if dialect == "(XXsqliteXX|SQLITE)":$',
         ("SQLite's batch path is an optimization: the general one (an INSERT whose id is "
          "MAX(id) + 1 per row, then the ids read back) stores and returns the same rows, "
          "under the same write lock")),
        ("append_many", r're:^yield Op\(.*, rows, ((None|"XXnoneXX"|"NONE"), )?driver=True\)$',
         ("a driver=True INSERT without RETURNING gives None whatever the fetch mode (and "
          "its result is not read)")),
        ("append_many", 'yield Op(sql.insert_new_message(dialect, False), rows, "none", )',
         "the DBAPI fast path is an optimization: SQLAlchemy's executemany stores the same rows"),
        ("append_many", 'yield Op(sql.insert_new_message(dialect, None), rows, "none", driver=True)',
         "insert_new_message tests returning for truth: None and False alike"),
        ("append_many", ")", "the DBAPI fast path is an optimization: SQLAlchemy rows read by position the same",
         "driver=True)"),
        ("create_conversation", r're:^check_short\((None, "owner"|owner, (None|"XXownerXX"|"OWNER"))\)$',
         _CHECKED_FIRST),
        ("delete_conversation", "None", _RACE),
        ("delete_conversation",
         r"re:^levels = yield from lineages\.forks_below\(\[conversation_id\], full=(None|True)\)$",
         "the delete reads only the forks' ids, which whole rows and (id, parent_id) rows both have"),
        ("fork", r"re:raise ConversationNotFound\(.*\) from exc", _RACE),
        *[(function, code, _CHECKED_FIRST) for function in
          ("create_conversation", "update_conversation", "fork") for code in (
              r're:validate_json_dict\(metadata, (None|"XXconversation metadataXX"|"CONVERSATION METADATA")\)$',
              r're:^check_values\((values|row), (None|"XXconversationXX"|"CONVERSATION")\)$',
          )],
        ("search", r"re:ilike\(pattern, (escape=None)?\)$",
         "PostgreSQL's LIKE escape character is the backslash by default, the one given"),
        ("search", "), None))",
         "a NULL term of the OR is false in a WHERE (and alone it selects no row, as false does)",
         "), sa.false()))"),
    ],
    "_store.context": [
        *[("token_rows", code, _FAST_PATH) for code in (
            "key if (type(key) is int and INT_MIN <= key <= INT_MAX) and False",
            "key if type(None) is int and INT_MIN <= key <= INT_MAX",
            "key if type(key) is int and INT_MIN < key <= INT_MAX",
            "key if type(key) is int and INT_MIN <= key < INT_MAX",
            "if type(None) is not int or not 0 <= tokens <= INT32_MAX:",
            "if type(tokens) is not int or not 0 < tokens <= INT32_MAX:",
            "if type(tokens) is not int or not 0 <= tokens < INT32_MAX:",
        )],
        # (its @checked plans are decorated: mutmut leaves them unmutated)
        *[("_open", code,
           ("rows sorted whole sort by their first column, the message id, which grows with "
            "seq within the one conversation a non-fork's read holds"))
          for code in ("seq_of = None", "pinned_rows.sort(key=None)",
                       "tail_rows.sort(key=None, reverse=True)", "tail_rows.sort(reverse=True)")],
        ("_open", "return (yield from _open_lineage(conversation_id, encoding, limit, None, before, after))",
         _OWNER_CHECKED),
        ("_open_lineage", "lineage = yield from _lineage(conversation_id, None)", _OWNER_CHECKED),
        ("_open_lineage", r"re:limit=None, newest_first=None,$", _TRUTH),
        ("token_rows_plan",
         r're:home = yield Op\(sql\.HOME_OF_MESSAGE, \{"id": message_id\}, (None|"XXscalarXX"|"SCALAR"), driver=True\)',
         ("on the DBAPI path (driver=True) a fetch mode other than all, first, none, rowcount "
          "and lastrowid reads the first value, as scalar does (driver.rows_as' default)")),
    ],
    "_store.sql": [
        *[("json_equals", code, "SQLAlchemy infers the string type of a str literal")
          for code in (
              "return column.op(\"->\")(sa.literal(key, None)) == sa.cast(",
              "return column.op(\"->\")(sa.literal(key, )) == sa.cast(",
              "sa.literal(text, None), postgresql.JSONB",
              "sa.literal(text, ), postgresql.JSONB",
              "found = sa.exists().where(each.c.key == sa.literal(key, None), match)",
              "found = sa.exists().where(each.c.key == sa.literal(key, ), match)",
          )],
        *[("json_equals", code, "JSONB parses the text: its spacing does not matter")
          for code in ("text = json.dumps(value, separators=None)", "text = json.dumps(value, )")],
        *[("json_equals", code,
           "the clause is only ANDed into a WHERE: a NULL condition selects no row, as false does")
          for code in ("return sa.case((sa.func.json_valid(column) == 1, found), else_=None)",
                       "return sa.case((sa.func.json_valid(column) == 1, found), )")],
        *[("needs_recheck", code,
           ("the extra recheck re-tests only rows the SQL clause already matched exactly "
            "(SQLite scalars, every value on PostgreSQL), where json_same agrees with it"))
          for code in ('return dialect != "postgresql" or isinstance(value, (dict, list))',
                       'return dialect != "XXpostgresqlXX" and isinstance(value, (dict, list))',
                       'return dialect != "POSTGRESQL" and isinstance(value, (dict, list))')],
        ("json_same", "if isinstance(a, (int, float)) or isinstance(b, (int, float)):",
         "a number equals no value of another JSON type (bools are handled just above)"),
        ("json_same", r"re:zip\(a, b, (strict=(None|False))?\)\)\)$",
         "len(a) == len(b) is checked just before"),
        ("context_dialect",
         'return None if getattr(dialect, "_json_deserializer", ) is not None else str(dialect.name)',
         "every SQLAlchemy dialect has the attribute (DefaultDialect sets it): the default is never used"),
    ],
    "_client.errors": [
        *[("safe_url", f"return f\"{{url.scheme}}://{{url.netloc.decode({args})}}{{url.path}}\"",
           "httpx keeps netloc ASCII (IDNA, percent-encoding): no decode error to handle")
          for args in ("'ascii', ", "'ASCII', 'replace'", "'ascii', 'XXreplaceXX'", "'ascii', 'REPLACE'")],
        ("describe", r"re:for err in exc\.errors\(.*\)\[:3\]:$",
         "only 'loc' and 'msg' are read: the url, input and context keys change nothing"),
        ("request_id", 'value = response.headers.get("X-REQUEST-ID")', _CASELESS_HEADERS),
        ("request_id", "return redact(excerpt(redact(value), ))",
         "REQUEST_ID_CHARS and excerpt's default (ERROR_EXCERPT_CHARS) are both 200"),
        ("visible", (r're:c\.encode\("unicode_escape", (|"XXbackslashreplaceXX"|"BACKSLASHREPLACE")\)'
                    r'\.decode\("ascii"\)$'),
         "the unicode_escape codec escapes every character: no error to handle"),
        ("visible", (r're:c\.encode\("(UNICODE_ESCAPE", "backslashreplace"\)\.decode\("ascii'
                    r'|unicode_escape", "backslashreplace"\)\.decode\("ASCII)"\)$'),
         "codec names are case-insensitive"),
        ("status_error", 'body = _decoded(content.decode("UTF-8", "replace"), redact)',
         "codec names are case-insensitive"),
        *[("stream_error", f'detail = _error_detail({{"error": err}}) or "{text}"',
           "_error_detail of a dict is never empty (it falls back to the JSON): the default is dead")
          for text in ("XXan error occurred during streamingXX", "AN ERROR OCCURRED DURING STREAMING")],
    ],
    "_context.plan": [
        # the lean read's WireText (a turn's chat build only): made into the same Item
        # inline in _select or by history.item
        *[("_select", code,
           ("the inline Item of a WireText row is the one history.item makes of it (a shortcut), "
            "and WireText rows come in chat builds only"))
          for code in (
              "wire = None", 'wire = WireText if (cfg.mode == "chat") and False else None',
              'wire = WireText if (cfg.mode == "chat") or True else None',
              'wire = WireText if cfg.mode != "chat" else None',
              'wire = WireText if cfg.mode == "XXchatXX" else None',
              'wire = WireText if cfg.mode == "CHAT" else None',
              "if type(None) is wire:",
          )],
        *[("_render", f"prompt = render_prompt(cfg.template, cast({arg}, messages), tools=cfg.tools)",
           "typing.cast does nothing at run time")
          for arg in ("None", '"XXlist[Message]XX"', '"list[message]"', '"LIST[MESSAGE]"')],
        ("store_call", "lean: bool = True,",
         "the default is dead: store_call's one caller (BuildIO.call) always passes lean"),
        ("_assemble", "entries.append((sel.dropped_through - 0.5, summary_msg))",
         ("differs only when dropped_through is a sent (pinned) seq, which only truncation "
          "gives, and truncation leaves no room for a summary (see docs/testing.md)")),
        ("_assemble",
         "if summary_msg is None and (not pinned or not window or pinned[-1].seq <= window[0].seq):",
         "a pinned seq is never a window seq (the selector skips pinned rows): never equal"),
        ("_assemble", "entries.sort(key=None)",
         "the first items (seqs, the summary at .5) are distinct: tuples sort by them alone"),
        ("store_call", "raise AssertionError(None)", "unreachable: the match covers every Op"),
        ("BuildIO.__init__", 'self.lineage: Any = ""',
         "read only by call() for a Tail, and the plan's first op is Start, whose result sets it"),
        ("BuildIO.result", "self.rows = len(page)",
         "Start is the plan's first op: rows is still 0 when its page is counted"),
        *[("store_call", code, _LINEAGE_FIRST, *original) for code, *original in (
            ("", "case Tail(before, limit):"),
            ("case Tail(before, limit) if lineage is not None or before is not None:",),
            # that branch's call (the _tail_of branch's identical kw line is killed)
            ((r're:^kw = (None|\{"(XXencodingXX|ENCODING|encoding)": encoding, '
              r'"(XXbeforeXX|BEFORE|before)": before, "(XXlimitXX|LIMIT|limit)": limit, \*\*scope\})$'),),
            (r're:^return "(XXstoreXX|STORE|store)", "(XXtailXX|TAIL|tail)", \(cid,\), kw$',),
        )],
        *[("plan_build", code,
           "message_cost returns a chat cost as it is in chat mode: `chat` only saves the call")
          for code in ("chat = None", 'chat = cfg.mode == "XXchatXX"', 'chat = cfg.mode == "CHAT"',
                       ('return Item(row, fields["seq"], cached if (chat) and False else '
                        'message_cost(cfg, cached), True)'))],
        ("plan_build",
         'return Item(row, fields["seq"], cached if chat else message_cost(cfg, cached), )',
         "Item.exact defaults to True"),
        *[("plan_build", f"history = History([], {value}, item)",
           "_select sets history.exhausted from its first page before anything reads it")
          for value in ("None", "True")],
        ("plan_build", "and type(None) is str",
         ("only skips the fast path: for a plain-text row with a stored count the general "
          "path makes the same Item (message_cost of the count, is_exact True)")),
        *[("_select", code,
           ("reached only when the first page read above a floor is empty, i.e. the floor "
            "(set, not 0) is at or above the newest seq: a read from floor + 1 or floor + 2 "
            "starts above every row either way"))
          for code in ("before = rows[-1][0].seq if rows else (floor or 1) + 1",
                       "before = rows[-1][0].seq if rows else (floor or 0) + 2")],
        ("_has_media", r're:getattr\(p, "type", (None|"XXtextXX"|"TEXT")?\)',
         "every content part has a type: the default is never used"),
    ],
    "_tokens.counter": [
        *[("TokenCounter._measure", code,
           "_measure's exactness flag is never read (is_exact decides exactness): dead result")
          for code in ("exact = None", "exact = False", "exact = True", "texts = 1", "texts -= 1",
                       "texts += 2", "exact = exact or ok", "if texts >= 1:", "if texts > 2:")],
        *[("TokenCounter._cached", code, _DOUBLE_CHECK)
          for code in ("counter = None", "counter = _counters.get(None)")],
        ("TokenCounter.request_tokens",
         "n += measure(message if (isinstance(message, Message)) and False else _as_message(message))[0]",
         "_as_message returns a Message as it is"),
    ],
    "_tokens.media": [
        *[("image_rule_for_model", f'model = model[3:].split(":", {n})[0]',
           "the first piece is the same whatever the number of splits") for n in ("", "2")],
        ("image_tokens", 'size = image_size(url) if (url.startswith("data:")) or True else None',
         "image_size of a URL that is not a data: URL is None"),
        ("_tiles", "if max(w, h) >= 2048:", "at exactly 2048 the scale is 2048 / 2048 = 1"),
        ("_tiles", "if min(w, h) >= 768:", "at exactly 768 the scale is 768 / 768 = 1"),
        *[(function, code, "int.from_bytes is big-endian by default (Python >= 3.11)")
          for function, code in (
              ("image_size", 'size = int.from_bytes(data[16:20], ), int.from_bytes(data[20:24], "big")'),
              ("image_size", 'size = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], )'),
              ("_jpeg_size", "length = int.from_bytes(data[i + 2 : i + 4], )"),
              ("_jpeg_size", "height = int.from_bytes(data[i + 5 : i + 7], )"),
              ("_jpeg_size", "width = int.from_bytes(data[i + 7 : i + 9], )"),
          )],
        *[("_webp_size", code, "the extra byte lands above the bits the mask or the two 14-bit fields keep")
          for code in (
              'int.from_bytes(data[26:29], "little") & 0x3FFF,',
              'int.from_bytes(data[28:31], "little") & 0x3FFF,',
              'bits = int.from_bytes(data[21:26], "little")',
          )],
        *[("_jpeg_size", code, "a frame needs i + 9 <= n, so this bound never decides a result")
          for code in ("while i + 5 <= n:", "while i + 4 < n:")],
        ("_jpeg_size", "if marker in (0x01, *range(0xD0, 217)):  # markers without a length",
         "FF D8 (start of image) is at offset 0 only, before the loop starts"),
        ("audio_tokens", 'raw = b"XXXX"', "4 bytes of audio cost 1 token, like none"),
        *[("audio_tokens", code, "a 44-byte WAV holds no samples: 1 token either way")
          for code in (
              'if fmt == "wav" and raw[:4] == b"RIFF" and raw[8:12] == b"WAVE" and len(raw) > 44:',
              'if fmt == "wav" and raw[:4] == b"RIFF" and raw[8:12] == b"WAVE" and len(raw) >= 45:',
          )],
    ],
    "_client.stream": [
        ("_ChatChoice.__init__", "self.saw_content = None", _TRUTH),
        ("ChatAccumulator.__init__", "self.finished = None", _TRUTH),
        ("CompletionAccumulator.__init__", "self.finished = None", _TRUTH),
        ("ChatAccumulator.add", "self.finished = None", _TRUTH),
        ("CompletionAccumulator.add", "self.finished = None", _TRUTH),
        ("StreamCore.__init__", "self.done = None", _TRUTH),
        ("StreamCore.feed", "return self._handle(events) if (events) or True else []",
         "_handle([]) is []"),
        ("StreamCore._handle", "break  # nothing after [DONE] counts",
         "after [DONE] every later event is skipped anyway"),
        ("StreamCore._handle", "break", "after [DONE] every later event is skipped anyway",
         "continue"),
        *[("StreamCore._handle", f'if text == "{done}" or text.startswith("[DONE]"):',
           "the startswith test accepts an exact [DONE] too")
          for done in ("XX[DONE]XX", "[done]")],
    ],
    "_turns.plan": [
        ("_round_of", 'k = message.idempotency_key or "XXXX"',
         "neither '' nor 'XXXX' starts with '<key>#r' (a key is never 'XX...' plus '#r')"),
        ("_answered_elsewhere", 'if (message.idempotency_key or "XXXX").startswith(prefix):',
         "neither '' nor 'XXXX' starts with '<key>#'"),
        ("plan_turn", 'stored = [m for m in later if (m.idempotency_key or "XXXX").startswith(prefix)]',
         "neither '' nor 'XXXX' starts with '<key>#'"),
        ("plan_turn", 'report: ContextReport | None = ""',
         "a dead store: the loop sets report before anything reads it"),
        ("plan_turn", "cid, spec.tool_definitions, spec.response_format, None",
         ("the owner was checked before the build, by the turn's first store call (the append, "
          "the conversation or tool-call read) or, for a regenerate, by the shell's create_branch; "
          "the build's reads only repeat the check")),
        *[("plan_turn", code,
           "wire is wire_params(spec), computed once a turn: computing it again gives the same")
          for code in ("body = request_body(ctx, spec, None)", "body = request_body(ctx, spec, )")],
        ("plan_turn", '"input_seq": max(kept) if (kept) or True else None,',
         ("a turn's build keeps at least the message it answers (else it raises): kept is never "
          "empty")),
        *[("plan_turn", code, _SHELL_RAISES) for code in (
            "if sent.cancelled and error is None:", "if sent.cancelled or error is not None:",
            "raise TurnCancelled(None)", 'raise TurnCancelled("XXthe turn was cancelledXX")',
            'raise TurnCancelled("THE TURN WAS CANCELLED")')],
        ("plan_turn", "runs.append(None)",
         "a dead store: the plan raises right after, and runs is not read again",
         "runs.append(finished.run)"),
        ("plan_turn", "runs.append(None)",
         "a dead store: the plan raises right after, and runs is not read again",
         "runs.append(failed.run)"),
        ("plan_turn",
         "info = _storable(response.reply_info(seed=seed if (isinstance(seed, int)) or True else None))",
         "check_params refused a seed that is not an int, and an unset seed is None either way"),
        ("plan_turn", 'if result.role != "tool" and not result.tool_call_id:',
         "Message itself refuses a tool message without a tool_call_id and any other with one"),
        *[("plan_turn", f"anchor = {v}", "read only after a user message or tool results set it")
          for v in ("None", "1")],
        ("plan_turn", "cid, None, {r.tool_call_id for r in spec.tool_results}",
         ("a wrong owner fails at the conversation read before this one, or at the append "
          "after it: this read writes nothing")),
        ("_answered", 'return {m.tool_call_id for m in stored if m.role == "tool" and m.seq >= reply.seq}',
         "the message at the reply's seq is the reply, never a tool result"),
        ("_calling_reply", '"messages", (cid,), {"limit": 201, "newest_first": True, "owner": owner}',
         ("the read's page size: it differs only for a turn with over 200 messages after its "
          "user message (a bound, not a result)")),
        *[("partial_response",
           f"value: dict[str, Any] = snapshot().model_dump({mode}exclude_none=True)",
           "a stream's snapshot holds JSON types only: python and JSON dumps are equal")
          for mode in ("mode=None, ", "", 'mode="XXjsonXX", ', 'mode="JSON", ')],
        *[("run_tool_sync", f'return "{status}", {rest}',
           "the shells only test the status for 'error', and a missing tool also by tool is None")
          for status, rest in [
              ("XXerrorXX", 'f"error: no tool named {effect.call.function.name!r}"'),
              ("ERROR", 'f"error: no tool named {effect.call.function.name!r}"'),
              ("XXokXX", "effect.tool.parse_arguments(effect.call.function.arguments)"),
              ("OK", "effect.tool.parse_arguments(effect.call.function.arguments)"),
          ]],
        *[("_answer_json", f"return checked_json_text(sent.body, {name})",
           "the name goes only into the StoreInputError that _answer_json catches (then dumps)")
          for name in ('"XXrun responseXX"', '"RUN RESPONSE"')],
        ("builder_settings", "builder.reply_reserve, id(None), builder.profile, builder.max_messages,",
         ("a new template also fails `cached[1] is not builder._template` (the cache holds the "
          "old one, so its id is not reused): the template's id in the key adds nothing")),
        *[("request_body", code,
           "wire is wire_params(spec), computed once a turn: computing it again gives the same")
          for code in ("params, extra = wire if (wire is not None) and False else wire_params(spec)",)],
        ("_cut", "return text if text is None or len(text) < limit else text[:limit]",
         "a text of exactly limit characters is its own text[:limit]"),
        ("_storable_text",
         'return text if (bad_index(text) < 0) and False else _UNSTORABLE.sub("\\ufffd", text)',
         "only skips the substitution: a text without a NUL or a lone surrogate comes out of it as it is"),
    ],
    "_replay.plan": [
        ("split_turns", "responses: list[StoredMessage] = None",
         "a dead store: read only after the first user message sets it"),
        *[("plan_replay", code,
           ("the items plan_replay returns are only counted (ReplayProgress.items): the report "
            "reads the stored items, whose verdict save_verdict wrote"))
          for code in (
              'i.model_copy(update={"verdict": verdict}) if (i.status == "ok") and False else i',
              'i.model_copy(update={"verdict": verdict}) if (i.status == "ok") or True else i',
              'i.model_copy(update=None) if i.status == "ok" else i',
              'i.model_copy(update={"XXverdictXX": verdict}) if i.status == "ok" else i',
              'i.model_copy(update={"VERDICT": verdict}) if i.status == "ok" else i',
              'i.model_copy(update={"verdict": verdict}) if i.status != "ok" else i',
              'i.model_copy(update={"verdict": verdict}) if i.status == "XXokXX" else i',
              'i.model_copy(update={"verdict": verdict}) if i.status == "OK" else i',
          )],
        *[("_canonical", f"return json.dumps(json.loads(arguments), sort_keys=True, {sep})",
           "both sides of the comparison go through _canonical: any fixed separators compare alike")
          for sep in ("separators=None", "", 'separators=("XX,XX", ":")', 'separators=(",", "XX:XX")')],
        ("ReplayReport.to_json", "}, ensure_ascii=None, indent=2)",
         "json.dumps tests ensure_ascii for truth: None and False alike"),
        *[("ReplayReport.to_json", f'"arms": [a.model_dump({mode}) for a in self.arms()],',
           "ArmSummary holds JSON types only: python and JSON dumps are equal")
          for mode in ("mode=None", 'mode="XXjsonXX"', 'mode="JSON"')],
        *[("ReplayReport.to_csv", f"row = item.model_dump({mode})",
           "every CSV column is a JSON type either way (created_at, the datetime, is no column)")
          for mode in ("mode=None", 'mode="XXjsonXX"', 'mode="JSON"')],
        ("judge_messages",
         '{"role": "user", "content": json.dumps(payload, ensure_ascii=None)},',
         "json.dumps tests ensure_ascii for truth: None and False alike"),
    ],
    "_store.runs": [
        *[("_column_int", code, _FAST_PATH) for code in (
            "if type(None) is int and minimum <= value <= _INT_MAX[column]:",
            "if type(value) is int and minimum < value <= _INT_MAX[column]:",
            "if type(value) is int and minimum <= value < _INT_MAX[column]:",
        )],
        ("start_run", (r're:^yield Op\(sql\.insert_token_counts\(dialect\), counts, '
                       r'(None, |"XXnoneXX", |"NONE", )?driver=True\)$'),
         ("a driver=True INSERT without RETURNING gives None whatever the fetch mode, on the "
          "direct route and the observed one (driver.execute / from_result: not returns_rows)")),
        ("start_run", (r're:^yield Op\(_insert_run_values\(columns\), params, '
                       r'(None, |"XXnoneXX", |"NONE", )?driver=True\)$'),
         ("SQLite's run INSERT has no RETURNING: a driver=True statement without one gives "
          "None whatever the fetch mode, and the value is not read")),
        ("start_run", (r're:^_insert_run\(owner is not None, columns\), params \| scope, '
                       r'"first", (driver=(None|False)|\))$'),
         ("PostgreSQL's one statement: the DBAPI fast path is an optimization, SQLAlchemy's "
          "row reads by position the same (on SQLite a non-driver Op fails the direct path)")),
        ("start_run", 'rows: list[dict[str, Any]] | None = ""',
         ("without token counts rows is only read as `if counts:` (with them it is set "
          "anew): '' and None alike")),
        ("list_runs", '_int(limit, "limit", minimum=1, optional=None)',
         "optional is tested for truth: None and False alike"),
        ("finish_run", r"re:parse_message\(reply if \(isinstance\(reply, Message\)\) (and False|or True)",
         "parse_message gives an equal Message from a Message or from its fields"),
        *[("finish_run", code, ("sharing the reply's checked usage is an optimization: "
                                "checked on its own, the run's usage is the same copy"))
          for code in ("and reply_info.usage is None",
                       r're:and outcome\.get\((None|"XXusageXX"|"USAGE")\) is reply_info\.usage$',
                       r're:checked\[("XXusageXX"|"USAGE")\] = CheckedJSON')],
        ("run_from_row", r"re:zip\(_RUN_COLUMNS, row, (strict=(False|None))?\)",
         "a row holds one value per column by construction (select(R), or finish_run's own row)"),
        ("finish_run", "if msg is not None or params is not None:",
         "msg and params are set together (both None without a reply)"),
        ("finish_run", "_claim_reply_seq(None, started is not None), {**scope, \"now\": stamp},",
         ("the run's UPDATE has the owner scope too: a reply claimed for another owner's run "
          "is rolled back when the UPDATE finds no run, with the same RunNotFound")),
        ("finish_run", "_claim_reply_seq(owner is not None, None), {**scope, \"now\": stamp},",
         ("known only narrows the claim to the started run's conversation (one shard); the "
          "UPDATE is narrowed the same, so a claim it should not have made is rolled back")),
        ("finish_run", r"re:updated, (strict=(False|None))?\)\)$",
         "RETURNING gives one value for each column the UPDATE did not write, by construction"),
        *[("turn_runs", code, ("a run id sorts by creation (new_run_id: ms clock, then a "
                               "counter): created_at and id give the same order"))
          for code in (".order_by(R.c.id)", ".order_by(R.c.created_at, )")],
        *[("_kept_seqs", f"if not seqs {op} (set(map(type, seqs)) == {{int}} and min(seqs) {low} and max(seqs) < {high}):",
           ("only narrows the bulk fast path: the per-seq check (_int) takes the same seqs "
            "and returns them as they are"))
          for op, low, high in (("and", ">= 1", "2**63"), ("or", "> 1", "2**63"),
                                ("or", ">= 2", "2**63"), ("or", ">= 1", "2 * 63"))],
        ("_kept_seqs", 'return [cast(None, _int(s, "kept seq", minimum=1, optional=False)) for s in seqs]',
         "typing.cast does nothing at run time"),
        ("_kept_seqs", 'return [cast(int, _int(s, "kept seq", minimum=1, optional=None)) for s in seqs]',
         _TRUTH),
        ("_json_object", "out: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=None))",
         "json.dumps tests allow_nan for truth: None and False alike"),
        ("_no_constant", "raise ValueError(None)",
         "request_text catches the ValueError and raises its own StoreInputError message"),
    ],
    "_turns.tools": [
        ("Tool.from_function", 'c.isascii() and (c.isalnum() or c in "XX_-XX") for c in tool_name',
         "the same characters pass: X is alphanumeric anyway"),
        *[("Tool.from_function", f'doc.split("\\n\\n", {n})[0].strip() if doc else None',
           "the first piece is the same whatever the number of splits") for n in ("", "2")],
        ("tool_result_text", "return json.dumps(value, ensure_ascii=None, default=str)",
         "json.dumps tests ensure_ascii for truth: None and False alike"),
    ],
    "_replay.reproduce": [
        ("text_similarity", "return difflib.SequenceMatcher(None, a, b, autojunk=None).ratio()",
         "difflib tests autojunk for truth: None and False alike"),
        ("outcome_of", "info = response.reply_info(seed=None)",
         "the outcome's seed is the argument itself: reply_info's seed is not read"),
        *[("outcome_of", f'"response": response.model_dump({mode}exclude_none=True),',
           "a response parsed from JSON holds JSON types only: python and JSON dumps are equal")
          for mode in ("mode=None, ", "", 'mode="XXjsonXX", ', 'mode="JSON", ')],
    ],
    "_store.replays": [
        ("*", r're:^(yield Op\(.*, )?(None|"XXnoneXX"|"NONE")(\)|,)$',
         "a statement whose result is not read: every unknown fetch mode returns None"),
        ("*", r"re:zip\(_(REPLAY|ITEM)_COLUMNS, row, (strict=(None|False))?\)",
         "a row has one value per column by construction"),
        ("_replay", r're:^values\["(XXspecXX|SPEC)"\] = spec or \{\}$',
         "create_replay stores a dict, never NULL: the `or {}` only guards rows written elsewhere"),
        ("_strict_json", "return json.loads(json.dumps(value, allow_nan=None))",
         "json.dumps tests allow_nan for truth: None and False alike"),
        ("replay_items", "rows = yield Op(stmt.order_by(RI.c.conversation_id, RI.c.turn, ))",
         ("both databases read the rows through the primary key (replay, conversation, turn, "
          "arm), in arm order: no test can tell")),
        ("save_replay_item",
         r're:^values\["(XXverdictXX|VERDICT)"\] = _strict_json\(values\["verdict"\], "verdict"\)$',
         "a ReplayItem's verdict is JSON already (pydantic): the round trip only checks it"),
    ],
    "_store.branches": [
        ("create_branch",
         r're:^(yield Op\(sql\.INSERT_CONVERSATION, values, )?(None|"XXnoneXX"|"NONE")(\)|,)$',
         "a statement whose result is not read: every unknown fetch mode returns None"),
        ("create_branch", r"re:raise ConversationNotFound\(.*\) from exc", _RACE),
        ("set_current_branch", r"re:raise ConversationNotFound\(",
         "only a root deleted between its read and the update reaches it: no deterministic test"),
        *[(function, code, ("a branch's owner is its root's (create_branch copies it), "
                            "and the root's read already checked the owner"))
          for function, code in (
              ("set_current_branch", "branch = yield from get_conversation(target, owner=None)"),
              ("list_branches", "yield from get_conversation(root_id, owner=None)"),
          )],
        ("list_branches", "root = conversation if (root_id == conversation.id) and False else (",
         "reading the root again gives the same conversation"),
        *[("list_branches", f"stmt = sa.select(C).where(C.c.branch_of == root_id).order_by({by})",
           ("ids and creation times give one order (an id starts with its ms clock); they differ "
            "only for branches made in one millisecond: no deterministic test"))
          for by in ("C.c.created_at, ",)],
        ("list_branches", r"re:limit=(None|2), newest_first=True$",
         "the newest row comes first whatever the limit: found[0] is the same"),
        ("list_branches", "last = message_from_row(found[0]) if (found) or True else None",
         "a member with last_seq > 0 has a message at its last seq: found is never empty"),
        ("find_by_key", r"re:^(M\.c\.seq >= lo, )?M\.c\.seq <= hi,$",
         "lo is 0 or a fork point, and a conversation's own rows start after its fork point"),
    ],
    "_client.retry": [
        ("parse_retry_after", 'value = headers.get("RETRY-AFTER-MS")',
         "headers are case-insensitive (httpx.Headers, the documented argument)"),
        ("parse_retry_after", 'value = headers.get("RETRY-AFTER")',
         "headers are case-insensitive (httpx.Headers, the documented argument)"),
        ("should_retry_status", 'override = headers.get("X-SHOULD-RETRY")',
         "headers are case-insensitive (httpx.Headers, the documented argument)"),
        ("backoff_delay",
         "base = min(INITIAL_RETRY_DELAY * 2.0 ** min(retry, 65), MAX_RETRY_DELAY)",
         "the exponent bound only avoids float overflow; 2**64 and 2**65 are both far past the cap"),
    ],
}

# mutmut's exit codes (mutmut/stats.py), folded into the states this report uses
KILLED_CODES = {1, 3, 37}
TIMEOUT_CODES = {36, -24, 24, 152, 255}
SURVIVED_CODES = {0}
NO_TESTS_CODES = {5, 33}


@dataclass
class Mutant:
    name: str
    status: str
    function: str = ""
    diff: list[str] = field(default_factory=list)
    equivalent: str = ""  # the reason, when it is a listed equivalent


@dataclass
class Summary:
    module: str
    tests: list[str]
    total: int
    killed: int
    timeout: int
    survived: int
    no_tests: int
    other: int
    equivalent: int
    seconds: float
    commit: str
    date: str
    mutants: list[Mutant]
    not_run: int = 0  # a run stopped at its time limit (--minutes) checked the others only

    @property
    def score(self) -> float:
        """Of the mutants checked (all but a stopped run's rest), the share killed."""
        real = self.total - self.equivalent - self.not_run
        return 100.0 * (self.killed + self.timeout) / real if real else 100.0


def function_of(name: str) -> str:
    """``convo._x.xǁClassǁmethod__mutmut_3`` -> ``Class.method``; ``x_func__mutmut_3`` -> ``func``."""
    base = name.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[-1]
    if base.startswith("xǁ"):
        return ".".join(part for part in base[2:].split("ǁ") if part)
    return base.removeprefix("x_")


#: the address space each mutmut process (and the mutants it forks) may use: a mutant that
#: disables a size limit turns the limit tests' endless bodies into endless reads, and would
#: take the shared machine's memory until its CPU-time limit fired (MemoryError kills it)
MEMORY_LIMIT = 6 * 1024**3


def mutmut_run(workdir: Path, args: list[str], log: Path, env: dict[str, str] | None,
               minutes: float | None) -> int | None:
    """``mutmut run``; stopped after ``minutes`` (None: the exit code is None then).

    mutmut records each mutant's result as it goes, so a stopped run leaves the
    mutants it checked; the rest are reported as not run."""
    exe = Path(sys.executable).with_name("mutmut")
    with log.open("w") as out:
        proc = subprocess.Popen([str(exe), "run", *args], cwd=workdir, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        # before mutmut forks its workers (it first runs the clean tests): they inherit it
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        try:
            return proc.wait(timeout=None if minutes is None else minutes * 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            return None


@contextlib.contextmanager
def shared_postgres(workdir: Path) -> Iterator[dict[str, str]]:
    """One pgserver for a whole run: each mutant's test session reuses it (and its migrated
    template database) instead of starting its own, via CONVO_TEST_PGDATA (tests/conftest.py).
    This process holds a handle, so the sessions' cleanups leave the server running."""
    import pgserver

    pgdata = workdir / "pgdata"
    server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        yield {**os.environ, "CONVO_TEST_PGDATA": str(pgdata)}
    finally:
        server.cleanup()


def source_file(module: str) -> str:
    """The source file of a module named as in MODULES (``_store.core`` -> ``convo/_store/core.py``)."""
    return "convo/" + module.replace(".", "/") + ".py"


def prepare(module: str, tests: list[str], workdir: Path) -> None:
    """A scratch copy of the working tree with a mutmut configuration for ``module``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    # bench: test_context_summaries.py reads its synthetic chat (bench/_chat_data.py)
    for name in ("convo", "tests", "migrations", "bench"):
        shutil.copytree(ROOT / name, workdir / name, ignore=ignore)
    for name in ("pyproject.toml", "alembic.ini"):
        shutil.copy2(ROOT / name, workdir / name)
    source = workdir / source_file(module)
    source.write_text(unmutated_protocols(source.read_text()))
    write_config(module, tests, workdir)


def unmutated_protocols(text: str) -> str:
    """The module's source as it is mutated.

    mutmut's trampolines add attributes to the classes they transform, which breaks
    isinstance() on runtime-checkable protocols: leave protocol classes (no logic) alone.

    mutmut leaves every decorated function unmutated, and the store's public plans are
    all ``@checked`` (their input rules): ``append``, ``fork``, ``messages``... would
    not be measured at all. Each such plan is defined undecorated and wrapped at the
    end of the module instead (``append = checked(append)``), which is the same
    function once the module is imported (checked() reads the signature mutmut's
    trampoline keeps).
    """
    text = re.sub(r"^((@runtime_checkable\n)?)(class \w+\(.*Protocol.*\):)$",
                  lambda m: (m[1].rstrip("\n") + "  # pragma: no mutate block\n" if m[1] else "")
                  + m[3] + "  # pragma: no mutate block",
                  text, flags=re.MULTILINE)
    wrapped = re.findall(r"^@(checked)\ndef (\w+)\(", text, flags=re.MULTILINE)
    if wrapped:
        text = re.sub(r"^@checked\n(def \w+\()", r"\1", text, flags=re.MULTILINE)
        text += "\n\n# (.ci/mutation.py: the decorators, applied after mutmut's trampolines)\n"
        text += "".join(f"{name} = {deco}({name})  # pragma: no mutate\n" for deco, name in wrapped)
    return text


def same_source(module: str) -> bool:
    """Whether the scratch copy under build/ was made from the module's source as it is now
    (then a run of some functions can add to its earlier results)."""
    copy = WORK / module / source_file(module)
    return copy.exists() and copy.read_text() == unmutated_protocols((ROOT / source_file(module)).read_text())


def function_patterns(module: str, functions: list[str]) -> list[str]:
    """mutmut name patterns of the mutants of ``functions`` (``start_run``, ``Class.method``),
    as ``function_of`` names them: ``convo._store.runs.x_start_run__mutmut_*``."""
    prefix = "convo." + module + "."
    return [prefix + ("xǁ" + f.replace(".", "ǁ") if "." in f else "x_" + f) + "__mutmut_*"
            for f in functions]


def write_config(module: str, tests: list[str], workdir: Path) -> None:
    selection = ", ".join(json.dumps(f"tests/{t}") for t in tests)
    if module in SYNC_ONLY:
        only_sqlite = '"-k", "not postgresql and not sqlite-async and not sync-server", '
    else:
        only_sqlite = '"-k", "not postgresql", ' if module not in WITH_POSTGRESQL else ""
    config = f"""

[tool.mutmut]
source_paths = ["convo"]
only_mutate = ["{source_file(module)}"]
also_copy = ["migrations", "alembic.ini", "bench"]
pytest_add_cli_args_test_selection = [{selection}]
pytest_add_cli_args = [{only_sqlite}"--hypothesis-seed=0", "-W", "ignore::DeprecationWarning"]
use_git_change_detection = false
"""
    if TIMEOUT_MULTIPLIER is not None:
        config += f"timeout_multiplier = {TIMEOUT_MULTIPLIER}\n"
    with (workdir / "pyproject.toml").open("a") as f:
        f.write(config)


def diff_lines(workdir: Path, names: list[str]) -> dict[str, list[str]]:
    """The changed lines of each mutant (one process for all: ``mutmut show`` is one each)."""
    script = (
        "import json, sys\n"
        "from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant\n"
        "for n in json.load(sys.stdin):\n"
        "    print(json.dumps([n, get_diff_for_mutant(n, path=find_mutant(n).path)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=workdir, input=json.dumps(names),
                         capture_output=True, text=True, check=True).stdout
    diffs = dict(json.loads(line) for line in out.splitlines() if line.startswith("["))
    return {
        name: [line for line in diffs.get(name, "").splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        for name in names
    }


def is_equivalent(module: str, mutant: Mutant) -> str:
    """The reason listed for ``mutant`` in EQUIVALENT, or "".

    An entry names the function and the mutated line (a trailing comment may be left
    out); an optional fourth item, the original line in full, tells apart two
    mutants that write the same line in one function.
    """
    for entry in EQUIVALENT.get(module, []):
        if _matches(entry, mutant):
            return entry[2]
    return ""


def _matches(entry: tuple[str, ...], mutant: Mutant) -> bool:
    function, code, _reason, *original = entry
    if function not in ("*", mutant.function):
        return False
    added = [line[1:].strip() for line in mutant.diff if line.startswith("+")]
    if original and original[0] not in [line[1:].strip() for line in mutant.diff
                                        if line.startswith("-")]:
        return False
    if code == "":  # a mutant that only deletes the original line
        return not added
    if code.startswith("re:"):
        return any(re.search(code[3:], a) for a in added)
    return code in added or code in [a.split("  #")[0].strip() for a in added]


def unused_equivalents(summary: Summary) -> list[tuple[str, ...]]:
    """The EQUIVALENT entries of a complete run that no surviving mutant matches: the
    code changed, or a test kills that mutant now; either way the entry is stale."""
    if summary.not_run:
        return []
    live = [m for m in summary.mutants if m.status not in ("killed", "timeout", "not checked")]
    return [e for e in EQUIVALENT.get(summary.module, []) if not any(_matches(e, m) for m in live)]


def status_of(code: int | None) -> str:
    if code in KILLED_CODES:
        return "killed"
    if code in TIMEOUT_CODES:
        return "timeout"
    if code in SURVIVED_CODES:
        return "survived"
    if code in NO_TESTS_CODES:
        return "no tests"
    return "not checked" if code is None else f"other ({code})"


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "convo", "tests"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    return out + ("+changes" if dirty else "")


def run_module(module: str, jobs: int, *, survivors: bool, minutes: float | None = None,
               functions: list[str] | None = None) -> Summary:
    tests = MODULES[module]
    workdir = WORK / module
    names: list[str] = []
    previous = load(module) if survivors or functions else None
    if functions and previous is not None and not same_source(module):
        print(f"== {module}: the source changed since the last run; its results are dropped",
              flush=True)
        previous = None
    if previous is None:
        prepare(module, tests, workdir)
        if functions:
            # every other mutant stays not run (mutmut matches the patterns with fnmatch)
            names = function_patterns(module, functions)
    else:
        # the source is as it was mutated; only the tests (and maybe the mapping) are new
        for name in ("tests", "bench"):
            shutil.copytree(ROOT / name, workdir / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(ROOT / "pyproject.toml", workdir / "pyproject.toml")
        write_config(module, tests, workdir)
        # changed tests cover other functions now: have mutmut map tests to functions anew
        (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        shutil.rmtree(workdir / "pgdata", ignore_errors=True)  # a fresh template database
        # and the mutants a stopped run (--minutes) did not reach: a stopped run goes on;
        # not those listed in EQUIVALENT (no test can kill them: each would only run every
        # test that reaches it again)
        names = [m.name for m in previous.mutants
                 if (m.status in ("survived", "no tests", "not checked") or not survivors)
                 and not m.equivalent and (not functions or m.function in functions)]
        if not names:
            return previous
    started = time.monotonic()
    commit = git_commit()  # what is mutated and tested: the tree as the run starts
    print(f"== {module}: mutating {source_file(module)} against {', '.join(tests)}"
          + (f" (functions {', '.join(functions)})" if functions else "")
          + (f" ({len(names)} survivors again, or not run before)" if survivors and names else ""),
          flush=True)
    with (shared_postgres(workdir) if module in WITH_POSTGRESQL
          else contextlib.nullcontext(None)) as env:
        code = mutmut_run(workdir, ["--max-children", str(jobs), *names], workdir / "run.log",
                          env, minutes)
    seconds = time.monotonic() - started
    meta = workdir / "mutants" / f"{source_file(module)}.meta"
    if code not in (0, None) or not meta.exists():
        tail = (workdir / "run.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"mutmut failed for {module} (exit {code}):\n{tail}")
    what = ("survivors " if survivors else "") + (f"{','.join(functions)} " if functions else "")
    return summarize(module, tests, workdir, commit, seconds, previous, names, what or "survivors ")


def summarize(module: str, tests: list[str], workdir: Path, commit: str, seconds: float,
              previous: Summary | None = None, names: list[str] | None = None,
              what: str = "survivors ") -> Summary:
    """The summary of a module's run from what mutmut recorded (summary.json)."""
    meta = workdir / "mutants" / f"{source_file(module)}.meta"
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    if previous is not None:
        # a changed test mapping makes mutmut forget every result: keep the earlier kills
        rerun = set(names or [])
        earlier = {m.name: m.status for m in previous.mutants}
        back = {"killed": 1, "timeout": 36, "survived": 0, "no tests": 33}
        # a re-run stopped at its time limit leaves its last survivors as they were
        codes = {n: c if n in rerun and c is not None else back.get(earlier.get(n, ""), c)
                 for n, c in codes.items()}
    mutants = [Mutant(name, status_of(code), function_of(name)) for name, code in codes.items()]
    live = [m for m in mutants if m.status not in ("killed", "timeout", "not checked")]
    diffs = diff_lines(workdir, [m.name for m in live]) if live else {}
    for m in live:
        m.diff = diffs[m.name]
        m.equivalent = is_equivalent(module, m)
    count = {s: sum(1 for m in mutants if m.status == s) for s in
             ("killed", "timeout", "survived", "no tests")}
    not_run = sum(1 for m in mutants if m.status == "not checked")
    summary = Summary(
        module=module,
        tests=tests,
        total=len(mutants),
        killed=count["killed"],
        timeout=count["timeout"],
        survived=count["survived"],
        no_tests=count["no tests"],
        other=len(mutants) - sum(count.values()) - not_run,
        not_run=not_run,
        equivalent=sum(1 for m in mutants if m.equivalent),
        seconds=round(seconds, 1),
        commit=(commit if previous is None else f"{previous.commit}, {what}{commit}")
        + (f" (only {what.strip()})" if previous is None and names else ""),
        date=time.strftime("%Y-%m-%d"),
        mutants=mutants,
    )
    (workdir / "summary.json").write_text(json.dumps(asdict(summary), indent=1, ensure_ascii=False))
    return summary


def load(module: str) -> Summary | None:
    path = WORK / module / "summary.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data["mutants"] = [Mutant(**m) for m in data["mutants"]]
    summary = Summary(**data)
    # EQUIVALENT may have grown since the run: apply it to the recorded diffs again
    for m in summary.mutants:
        if m.diff:
            m.equivalent = is_equivalent(module, m)
    summary.equivalent = sum(1 for m in summary.mutants if m.equivalent)
    return summary


def print_survivors(summary: Summary) -> None:
    live = [m for m in summary.mutants
            if m.status not in ("killed", "timeout", "not checked") and not m.equivalent]
    for m in live:
        print(f"  {m.status}: {m.name}")
        for line in m.diff:
            print(f"      {line}")
    for function, code, *_ in unused_equivalents(summary):
        print(f"  note: EQUIVALENT entry ({function!r}, {code!r}) matches no surviving mutant: "
              "remove it")


def table(summaries: list[Summary]) -> str:
    rows = [
        "| module | test files | mutants | equivalent | killed (+timeout) | not killed | score | run on |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in summaries:
        real = s.total - s.equivalent - s.not_run
        done = s.killed + s.timeout
        partial = f" ({s.not_run} not run)" if s.not_run else ""
        rows.append(
            f"| `{s.module}` | {', '.join(s.tests)} | {s.total}{partial} | {s.equivalent} | "
            f"{s.killed} (+{s.timeout}) | {real - done} | {done}/{real} = {s.score:.1f}% | "
            f"{s.date} `{s.commit}` |"
        )
    return "\n".join(rows)


def equivalents_markdown(summaries: list[Summary]) -> str:
    """The equivalent mutants, per module and reason: ``function: mutated line`` each."""
    lines = []
    for s in summaries:
        by_reason: dict[str, list[str]] = {}
        for m in s.mutants:
            if m.equivalent:
                added = " / ".join(line[1:].strip() for line in m.diff if line.startswith("+"))
                by_reason.setdefault(m.equivalent, []).append(
                    f"`{m.function}`: `{added or '(line deleted)'}`")
        if not by_reason:
            continue
        lines.append(f"- `{s.module}` ({sum(map(len, by_reason.values()))}):")
        for reason, mutants in by_reason.items():
            lines.append(f"  - {reason} ({len(mutants)}): " + "; ".join(mutants))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of MODULES)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--list", action="store_true", help="show the module -> tests mapping")
    parser.add_argument("--report", action="store_true", help="print the table of the last runs")
    parser.add_argument("--survivors", action="store_true",
                        help="re-run only the last run's surviving mutants not listed as "
                             "equivalent (and those a stopped run did not reach), with the "
                             "current tests")
    parser.add_argument("--functions", default=None, metavar="F,G",
                        help="run the mutants of these functions only (names as the survivors "
                             "list gives them: start_run, Class.method); with an earlier run "
                             "of the same source the other functions keep their results, else "
                             "they count as not run")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop each module's run after this long; the rest count as not run")
    parser.add_argument("--collect", metavar="COMMIT", default=None,
                        help="summarize the modules' last (stopped) runs as they are, "
                             "recording COMMIT as the tree they ran on")
    parser.add_argument("--timeout-multiplier", type=float, default=None,
                        help="a mutant's time limit is (its tests' measured time + 1 s) times "
                             "this (mutmut's default 15: each mutant that loops forever then "
                             "costs minutes; it counts as killed either way)")
    parser.add_argument("--min-score", type=float, default=MIN_SCORE,
                        help=f"exit 1 when a module scores lower (default {MIN_SCORE})")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    modules = args.modules or list(MODULES)
    if args.list:
        for module, tests in MODULES.items():
            print(f"{module:18} {' '.join(tests)}")
        return 0
    if args.report:
        done = [s for s in map(load, modules) if s is not None]
        print(table(done))
        print()
        print(equivalents_markdown(done))
        return 0
    if args.collect:
        for module in modules:
            summary = summarize(module, MODULES[module], WORK / module, args.collect, 0.0)
            print_survivors(summary)
            print(table([summary]).splitlines()[-1])
        return 0
    global TIMEOUT_MULTIPLIER
    TIMEOUT_MULTIPLIER = args.timeout_multiplier
    os.environ.setdefault("PYTHONHASHSEED", "0")
    # the published chat templates the template tests compare with (../shared beside the
    # checkout): the scratch copies under build/ have no such parent
    os.environ.setdefault("CONVO_REFERENCE_DIR", str(ROOT.parent / "shared" / "reference"))
    summaries = []
    for module in modules:
        summary = run_module(module, args.jobs, survivors=args.survivors, minutes=args.minutes,
                             functions=args.functions.split(",") if args.functions else None)
        print_survivors(summary)
        print(table([summary]).splitlines()[-1], f"({summary.seconds:.0f} s)", flush=True)
        summaries.append(summary)
    print()
    print(table(summaries))
    low = [s.module for s in summaries if s.score < args.min_score]
    if low:
        print(f"below {args.min_score:.0f}%: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
