"""The schema stays ready to shard by conversation (docs/scaling.md).

A sharded PostgreSQL (Citus) distributes each table by one column and co-locates
the rows that share its value; it then accepts a primary key, a unique
constraint or index only if it holds that column, and a foreign key between
distributed tables only if both sides hold it. convo distributes by
conversation: ``conversations`` by ``id``, every table that hangs off a
conversation by ``conversation_id``; ``replays`` is a reference table (a copy on
every node). :func:`shard_problems` checks a ``MetaData`` against those rules; it
runs on convo's models and on databases built by its migrations (both kinds),
and the tests below prove it rejects each kind of break.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from convo._store.engine import create_engine
from convo._store.schema import CONVERSATION_CHILDREN, metadata

ROOT = Path(__file__).resolve().parent.parent
#: Distributed by its own id.
ROOT_TABLE = "conversations"
#: Replicated to every node (a reference table): not per conversation.
REFERENCE_TABLES = frozenset({"replays"})
#: Foreign keys a sharded deployment drops before distributing (docs/scaling.md
#: says which and why); everything else must satisfy the rules.
DROPPED_FOR_SHARDING = frozenset({"fk_conversations_parent_id_conversations"})
#: Tables that are not convo's data.
IGNORED = frozenset({"alembic_version"})


def shard_problems(md: sa.MetaData, children: frozenset[str] | tuple[str, ...]) -> list[str]:
    """What in ``md`` keeps its tables from being distributed by conversation (empty: nothing)."""
    problems: list[str] = []
    children = frozenset(children)
    key_of = {ROOT_TABLE: "id", **dict.fromkeys(children, "conversation_id")}
    for table in md.tables.values():
        name = table.name
        if name in IGNORED:
            continue
        if name not in key_of and name not in REFERENCE_TABLES:
            problems.append(f"{name}: not classified (a conversation child, the root, or a "
                            "reference table?)")
            continue
        if name in REFERENCE_TABLES:
            for fk in table.foreign_key_constraints:
                if fk.referred_table.name not in REFERENCE_TABLES:
                    problems.append(f"{name}: reference table with a foreign key to "
                                    f"{fk.referred_table.name} ({fk.name})")
            continue
        key = key_of[name]
        if key not in table.c:
            problems.append(f"{name}: no {key} column")
            continue
        if table.c[key].nullable:
            problems.append(f"{name}: {key} is nullable")
        if key not in table.primary_key.columns:
            problems.append(f"{name}: primary key {list(table.primary_key.columns.keys())} "
                            f"lacks {key}")
        for constraint in table.constraints:
            if isinstance(constraint, sa.UniqueConstraint) and key not in constraint.columns:
                problems.append(f"{name}: unique constraint {constraint.name} "
                                f"{list(constraint.columns.keys())} lacks {key}")
        for index in table.indexes:
            if index.unique and key not in index.columns:
                problems.append(f"{name}: unique index {index.name} "
                                f"{list(index.columns.keys())} lacks {key}")
        for fk in table.foreign_key_constraints:
            if fk.name in DROPPED_FOR_SHARDING:
                continue
            target = fk.referred_table.name
            if target in REFERENCE_TABLES:
                continue  # distributed -> reference: allowed
            pairs = {(e.parent.name, e.column.name) for e in fk.elements}
            if target not in key_of or (key, key_of[target]) not in pairs:
                problems.append(f"{name}: foreign key {fk.name} to {target} does not pair "
                                f"{key} with {target}.{key_of.get(target, '?')}")
    return problems


def _reflected(url: sa.URL) -> sa.MetaData:
    engine = create_engine(url)
    try:
        md = sa.MetaData()
        md.reflect(bind=engine)
        return md
    finally:
        engine.dispose()


def test_the_models_are_ready_to_shard() -> None:
    assert set(CONVERSATION_CHILDREN) <= set(metadata.tables)
    assert shard_problems(metadata, CONVERSATION_CHILDREN) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrated_databases_are_ready_to_shard(backend, make_db) -> None:
    md = _reflected(make_db(backend))
    assert set(CONVERSATION_CHILDREN) <= set(md.tables)
    assert shard_problems(md, CONVERSATION_CHILDREN) == []
    # what the checker skips is there to skip (else the allowance hides nothing and goes)
    fks = {fk.name for t in md.tables.values() for fk in t.foreign_key_constraints}
    assert DROPPED_FOR_SHARDING <= fks


def test_the_scaling_page_names_what_a_sharded_deployment_drops() -> None:
    page = (ROOT / "docs" / "scaling.md").read_text()
    for name in sorted(DROPPED_FOR_SHARDING | REFERENCE_TABLES):
        assert name in page
    for table in CONVERSATION_CHILDREN:
        assert f"create_distributed_table('{table}', 'conversation_id'" in page


# --- the checker rejects each kind of break --------------------------------------------------


def _schema(**breaks: bool) -> sa.MetaData:
    """A small convo-shaped schema, with the chosen rules broken."""
    md = sa.MetaData()
    sa.Table("conversations", md, sa.Column("id", sa.String(32), primary_key=True))
    messages = sa.Table(
        "messages", md,
        sa.Column("id", sa.BigInteger, nullable=False),
        sa.Column("conversation_id", sa.String(32), sa.ForeignKey("conversations.id"),
                  nullable=breaks.get("nullable", False)),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint(*(["id"] if breaks.get("pk") else ["conversation_id", "id"]),
                                name="pk_messages"),
        sa.UniqueConstraint(*(["seq"] if breaks.get("unique") else ["conversation_id", "seq"]),
                            name="uq_messages"),
    )
    if breaks.get("unique_index"):
        sa.Index("ix_messages_seq", messages.c.seq, unique=True)
    token_cols = [sa.Column("message_id", sa.BigInteger), sa.Column("tokens", sa.Integer)]
    if not breaks.get("no_column"):
        token_cols.insert(0, sa.Column("conversation_id", sa.String(32), nullable=False))
    fk = (
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], name="fk_tokens_messages")
        if breaks.get("fk") or breaks.get("no_column")
        else sa.ForeignKeyConstraint(["conversation_id", "message_id"],
                                     ["messages.conversation_id", "messages.id"],
                                     name="fk_tokens_messages")
    )
    sa.Table("message_tokens", md, *token_cols, fk,
             sa.PrimaryKeyConstraint(*(c.name for c in token_cols[:2])))
    sa.Table("replays", md, sa.Column("id", sa.String(32), primary_key=True),
             *([sa.Column("conversation_id", sa.ForeignKey("conversations.id"))]
               if breaks.get("reference_fk") else []))
    if breaks.get("unclassified"):
        sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True))
    return md


CHILDREN = ("messages", "message_tokens")


def test_the_small_schema_is_ready() -> None:
    assert shard_problems(_schema(), CHILDREN) == []


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("pk", "messages: primary key ['id'] lacks conversation_id"),
        ("unique", "messages: unique constraint uq_messages ['seq'] lacks conversation_id"),
        ("unique_index", "messages: unique index ix_messages_seq ['seq'] lacks conversation_id"),
        ("nullable", "messages: conversation_id is nullable"),
        ("fk", "message_tokens: foreign key fk_tokens_messages to messages does not pair"),
        ("no_column", "message_tokens: no conversation_id column"),
        ("reference_fk", "replays: reference table with a foreign key to conversations"),
        ("unclassified", "notes: not classified"),
    ],
)
def test_the_checker_rejects_a_broken_schema(broken: str, expected: str) -> None:
    problems = shard_problems(_schema(**{broken: True}), CHILDREN)
    assert len(problems) == 1 and problems[0].startswith(expected), problems
