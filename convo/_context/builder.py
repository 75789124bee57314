"""ContextBuilder / AsyncContextBuilder: a stored conversation -> what the model sees.

Both drive the same pure plan (:mod:`convo._context.plan`); they only answer
its I/O requests with store and summarizer calls. Each store call is its own
short transaction, so no transaction is ever held open across a summarizer's
HTTP call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from .._exceptions import ConfigurationError, StoreInputError
from .._messages import Message
from .._store.async_store import AsyncStore
from .._store.store import Store
from .ops import BuildCounts
from .plan import BuildConfig, BuildIO, plan_build, rows_hint, run_async, run_sync
from .report import Context
from .selection import TruncateMode
from .summarizer import AsyncSummarizer, Summarizer

if TYPE_CHECKING:
    from .._models import ModelRegistry
    from .._render.chat import ChatProfile
    from .._render.templates import PromptTemplate
    from .._tokens.counter import TokenCounter

__all__ = ["AsyncContextBuilder", "ContextBuilder"]

Mode = Literal["chat", "completion"]

DEFAULT_LOW_WATER = 0.5
"""After an overflow, keep half of the history budget (summaries with hysteresis)."""

ROWS_REMEMBERED = 4096
"""Conversations whose last build's row count a builder keeps as a paging hint."""


StoreT = TypeVar("StoreT")
SummarizerT = TypeVar("SummarizerT")


class _BuilderBase:
    """What every builder holds: its resolved configuration (pure), and a build's config."""

    model: str
    mode: Mode
    budget: int
    reply_reserve: int | None
    profile: ChatProfile
    max_messages: int | None
    max_history_tokens: int | None
    truncate: TruncateMode | None
    summary_max_tokens: int
    summary_role: Literal["system", "developer", "user"]
    low_water: float | None
    page_size: int
    summarizer: Any
    #: conversation id -> rows its next build reads first and the floor of that read
    #: (``BuildConfig.rows_hint`` and ``floor``, from its last build)
    _rows_needed: dict[str, tuple[int, int | None]]
    #: stored tokens per history message in the last build (sizes a first page)
    _tokens_per_row: int | None
    _counter: TokenCounter
    _decode: Callable[[list[int]], str] | None
    _template: Any
    _recount: bool
    _render_chat: Callable[[Sequence[Message]], list[dict[str, Any]]]

    def _config(
        self,
        conversation_id: str,
        *,
        tools: list[dict[str, Any]] | None,
        response_format: dict[str, Any] | None,
        summarizing: bool,
        as_of: int | None,
    ) -> BuildConfig:
        if tools is not None and not isinstance(tools, list):
            raise ConfigurationError(
                f"tools must be a list of tool definitions, not {type(tools).__name__}"
            )
        if response_format is not None and not isinstance(response_format, dict):
            raise ConfigurationError(
                f"response_format must be a dict, not {type(response_format).__name__}"
            )
        hint = self._rows_needed.get(conversation_id) if as_of is None else None
        return BuildConfig(
            conversation_id=conversation_id,
            model=self.model,
            mode=self.mode,
            counter=self._counter,
            budget=self.budget,
            reply_reserve=self.reply_reserve,
            render_chat=self._render_chat,
            recount=self._recount,
            template=self._template,
            tools=tools,
            json_mode=bool(response_format and response_format.get("type") == "json_object"),
            max_messages=self.max_messages,
            max_history_tokens=self.max_history_tokens,
            truncate=self.truncate,
            summarizing=summarizing,
            summary_max_tokens=self.summary_max_tokens,
            summary_role=self.summary_role,
            page_size=self.page_size,
            decode=self._decode,
            low_water=self.low_water,
            as_of=_check_as_of(as_of),
            rows_hint=hint[0] if hint is not None else None,
            floor=hint[1] if hint is not None else None,
            tokens_hint=self._tokens_per_row,
        )

    def _remember(self, cfg: BuildConfig, ctx: Context, io: BuildIO) -> None:
        """Note how many rows the next build of the conversation should read first,
        and from which seq on (see ``BuildConfig.rows_hint`` and ``floor``)."""
        report = ctx.report
        if report.history_tokens and len(report.kept_seqs) > len(report.pinned_seqs):
            kept = len(report.kept_seqs) - len(report.pinned_seqs)
            self._tokens_per_row = max(1, report.history_tokens // kept)
        if cfg.as_of is not None:
            return
        if len(self._rows_needed) >= ROWS_REMEMBERED:
            self._rows_needed.clear()  # a cache of hints: starting over is harmless
        floor = None
        if report.dropped_count and io.newest is not None and not cfg.page_size:
            # the selection read seqs newest .. floor + 1 (pages are contiguous in seq,
            # and seqs are contiguous from 1) and needed nothing older
            floor = io.newest - report.rows_read
        self._rows_needed[cfg.conversation_id] = (
            rows_hint(report.rows_read, io.rows, read_all=report.dropped_count == 0), floor
        )

    def _turn_config(
        self,
        conversation_id: str,
        tools: list[dict[str, Any]] | None,
        response_format: dict[str, Any] | None,
        owner: str | None,
    ) -> tuple[BuildConfig, BuildIO]:
        """A turn's build: its config, and I/O that leaves the new token counts to
        the turn (the run's transaction stores them). A chat build without a
        summarizer hands no message out (the turn keeps the report and the body;
        a summarizer is given messages, a template renders them), so it reads
        them lean (see :class:`~convo._context.plan.BuildIO`)."""
        cfg = self._config(
            conversation_id, tools=tools, response_format=response_format,
            summarizing=self.summarizer is not None, as_of=None,
        )
        lean = cfg.mode == "chat" and not cfg.summarizing
        return cfg, BuildIO(
            conversation_id, owner, cfg.counter.encoding_name, defer_counts=True, lean=lean
        )


class _Builder(_BuilderBase, Generic[StoreT, SummarizerT]):
    """The constructor both builders share: every setting is an explicit keyword."""

    def __init__(
        self,
        store: StoreT,
        *,
        model: str,
        summarizer: SummarizerT | None = None,
        mode: Mode = "chat",
        encoding: str | None = None,
        template: PromptTemplate | str | None = None,
        profile: ChatProfile | None = None,
        budget: int | None = None,
        reserve: int | None = None,
        margin: int | None = None,
        max_messages: int | None = None,
        max_history_tokens: int | None = None,
        truncate: TruncateMode | None = None,
        summary_max_tokens: int = 512,
        summary_role: Literal["system", "developer", "user"] = "system",
        low_water: float | None = DEFAULT_LOW_WATER,
        registry: ModelRegistry | None = None,
        page_size: int = 0,
    ) -> None:
        """Configure the builder; it reads ``store`` on each ``build()``.

        Args:
            store: the store to read (a :class:`~convo.Store`, or an
                :class:`~convo.AsyncStore` for :class:`~convo.AsyncContextBuilder`).
            model: the model the context is for (its encoding and window come from
                the registry; pass ``encoding=`` for models it does not know).
            summarizer: summarizes dropped history; summaries are stored and reused
                (a :class:`~convo.Summarizer`, or an :class:`~convo.AsyncSummarizer`
                for the async builder). None: dropped history is left out.
            mode: ``"chat"`` (a message list) or ``"completion"`` (one flattened prompt).
            encoding: the tokenizer encoding, overriding the registry's.
            template: the completion template: a built-in name, a .jinja file, a
                tokenizer_config.json, or a :class:`~convo.PromptTemplate`
                (``mode="completion"`` only; default ``"transcript"``).
            profile: the chat capability profile of the target server (default
                :meth:`~convo.ChatProfile.openai`).
            budget: an explicit prompt token budget; otherwise the model's window
                minus ``reserve`` minus ``margin``.
            reserve: tokens held back for the reply (default: from the model).
            margin: safety margin in tokens (default 64).
            max_messages: cap on history messages (pinned ones not counted).
            max_history_tokens: cap on history tokens (pinned ones not counted).
            truncate: allow shortening an over-long newest user message
                (``"head"``, ``"tail"`` or ``"middle"`` is what is kept).
            summary_max_tokens: room held for the summary, and its length limit.
            summary_role: the role of the summary message.
            low_water: summaries that last (with a summarizer only): when history
                overflows, keep only this much of it and summarize the rest, so
                that one summary serves the next turns. A float in [0, 1] is a
                fraction of the history budget (the budget minus the pinned
                messages, the request overhead and ``summary_max_tokens``), an int
                a number of tokens. ``None`` turns hysteresis off: the summary is
                rolled forward whenever the window moves.
            registry: the model registry (default :data:`convo.models`).
            page_size: rows per store read (0: derived from the budget).

        Raises:
            ConfigurationError: contradictory or invalid settings.
            UnknownModelError: a model whose encoding is unknown, without ``encoding=``.
        """
        from .._models import DEFAULT_MARGIN, budget_for
        from .._models import models as default_registry
        from .._tokens.counter import TokenCounter
        from .._tokens.encodings import get_encoding

        if mode not in ("chat", "completion"):
            raise ConfigurationError(f"mode must be 'chat' or 'completion', not {mode!r}")
        _check_options(
            model=model, budget=budget, reserve=reserve, margin=margin,
            max_messages=max_messages, max_history_tokens=max_history_tokens, truncate=truncate,
            summary_max_tokens=summary_max_tokens, summary_role=summary_role,
            page_size=page_size, template=template,
        )
        self.store = store
        self.summarizer = summarizer
        self.model = model
        self.mode: Mode = mode
        reg = registry if registry is not None else default_registry
        self._counter = TokenCounter.for_model(model, encoding=encoding, registry=reg)
        # registered tokenizers need only encode(); truncation needs decode too
        self._decode = getattr(get_encoding(self._counter.encoding_name), "decode", None)
        if budget is not None:
            if reserve is not None or margin is not None:
                raise ConfigurationError("give either budget= or reserve=/margin=, not both")
            self.budget, self.reply_reserve = budget, None
        else:
            kw: dict[str, Any] = {"registry": reg}
            if reserve is not None:
                kw["reserve"] = reserve
            if margin is not None:
                kw["margin"] = margin
            self.budget = budget_for(model, **kw)
            # what budget_for held back for the reply (its default depends on the model)
            used_margin = margin if margin is not None else DEFAULT_MARGIN
            self.reply_reserve = reg.get(model).context_window - used_margin - self.budget
        self._template = None
        if mode == "completion":
            from .._render.templates import get_template

            tpl = template if template is not None else "transcript"
            self._template = get_template(tpl) if isinstance(tpl, str) else tpl
        elif template is not None:
            raise ConfigurationError("template= only applies to mode='completion'")
        from .._render.chat import ChatProfile, render_chat

        prof = profile if profile is not None else ChatProfile.openai()
        self.profile = prof
        # Stored counts are of the messages as OpenAI takes them; a profile that
        # rewrites messages (names dropped, parts flattened...) is counted again
        # on what it renders, so the reported tokens stay exact.
        self._recount = mode == "completion" or prof != ChatProfile.openai()
        self._render_chat = lambda msgs: render_chat(msgs, prof)
        self.max_messages = max_messages
        self.max_history_tokens = max_history_tokens
        self.truncate = truncate
        self.summary_max_tokens = summary_max_tokens
        self.summary_role = summary_role
        self.low_water = _check_low_water(low_water)
        self.page_size = page_size
        self._rows_needed = {}
        self._tokens_per_row = None


def _check_low_water(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"low_water must be a fraction (float), a token count (int) or None, not {value!r}"
        )
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ConfigurationError(
            f"low_water={value!r}: a fraction of the history budget is between 0.0 and 1.0 "
            "(an int is a token count)"
        )
    if value < 0:
        raise ConfigurationError(f"low_water={value!r}: a token count is >= 0")
    return value


def _check_as_of(as_of: int | None) -> int | None:
    if as_of is not None and (isinstance(as_of, bool) or not isinstance(as_of, int) or as_of < 1):
        raise StoreInputError(f"as_of must be a message seq (an int >= 1), not {as_of!r}")
    return as_of


class ContextBuilder(_Builder[Store, Summarizer]):
    """Builds the context of a stored conversation for one model (sync).

    The settings are those of :meth:`__init__`; a builder holds configuration
    only and is safe to share between requests.

    Example::

        builder = ContextBuilder(store, model="gpt-4o-mini")
        ctx = builder.build(conversation_id)
        ctx.request()          # {"model": ..., "messages": [...]}
        ctx.report.dropped_count
    """

    def build(
        self,
        conversation_id: str,
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
        owner: str | None = None,
        as_of: int | None = None,
    ) -> Context:
        """Build the context of ``conversation_id``; see :class:`~convo.ContextReport`.

        Args:
            conversation_id: the conversation (or fork) to build.
            tools: tool definitions to send; counted in the budget.
            response_format: the response format to be sent (JSON mode needs a
                message that mentions JSON; the build makes sure one is kept).
            owner: build only if the conversation belongs to this owner.
            as_of: build the context as it was with messages ``1..as_of`` only:
                nothing newer is read, only summaries ending at or before it are
                used, and nothing is written but token counts (a summary this
                needs is made and sent, not stored).

        Raises:
            ContextOverflowError: what must be kept does not fit the budget.
            ConversationNotFound: no such conversation (for this owner).
            MessageNotFound: ``as_of`` is past the conversation's last message.
        """
        cfg = self._config(
            conversation_id,
            tools=tools,
            response_format=response_format,
            summarizing=self.summarizer is not None,
            as_of=as_of,
        )

        return self._run(cfg, BuildIO(conversation_id, owner, cfg.counter.encoding_name))

    def _run(self, cfg: BuildConfig, io: BuildIO) -> Context:
        targets = {"store": self.store, "summarizer": self.summarizer}

        def handle(op: Any) -> Any:
            call = io.call(op)
            if call is None:
                return None
            target, method, args, kwargs = call
            return io.result(op, getattr(targets[target], method)(*args, **kwargs))

        ctx = run_sync(plan_build(cfg), handle)
        self._remember(cfg, ctx, io)
        return ctx

    def _build_for_turn(
        self,
        conversation_id: str,
        *,
        tools: list[dict[str, Any]] | None,
        response_format: dict[str, Any] | None,
        owner: str | None,
    ) -> tuple[Context, BuildCounts | None]:
        """:meth:`build`, leaving its new token counts to the turn (stored with its run)."""
        cfg, io = self._turn_config(conversation_id, tools, response_format, owner)
        return self._run(cfg, io), io.token_counts


class AsyncContextBuilder(_Builder[AsyncStore, AsyncSummarizer]):
    """:class:`ContextBuilder` over an :class:`~convo.AsyncStore`; ``build`` is awaited.

    The settings are those of :meth:`__init__` (the summarizer is an
    :class:`~convo.AsyncSummarizer`).

    Example::

        builder = AsyncContextBuilder(async_store, model="gpt-4o-mini")
        ctx = await builder.build(conversation_id)
    """

    async def build(
        self,
        conversation_id: str,
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
        owner: str | None = None,
        as_of: int | None = None,
    ) -> Context:
        """Build the context of ``conversation_id``; see :meth:`ContextBuilder.build`."""
        cfg = self._config(
            conversation_id,
            tools=tools,
            response_format=response_format,
            summarizing=self.summarizer is not None,
            as_of=as_of,
        )

        return await self._run(cfg, BuildIO(conversation_id, owner, cfg.counter.encoding_name))

    async def _run(self, cfg: BuildConfig, io: BuildIO) -> Context:
        targets = {"store": self.store, "summarizer": self.summarizer}

        async def handle(op: Any) -> Any:
            call = io.call(op)
            if call is None:
                return None
            target, method, args, kwargs = call
            return io.result(op, await getattr(targets[target], method)(*args, **kwargs))

        ctx = await run_async(plan_build(cfg), handle)
        self._remember(cfg, ctx, io)
        return ctx

    async def _build_for_turn(
        self,
        conversation_id: str,
        *,
        tools: list[dict[str, Any]] | None,
        response_format: dict[str, Any] | None,
        owner: str | None,
    ) -> tuple[Context, BuildCounts | None]:
        """See :meth:`ContextBuilder._build_for_turn`."""
        cfg, io = self._turn_config(conversation_id, tools, response_format, owner)
        return await self._run(cfg, io), io.token_counts


def _check_options(
    *,
    model: Any,
    budget: Any,
    reserve: Any,
    margin: Any,
    max_messages: Any,
    max_history_tokens: Any,
    truncate: Any,
    summary_max_tokens: Any,
    summary_role: Any,
    page_size: Any,
    template: Any,
) -> None:
    """Refuse builder options of the wrong type or range up front, with a
    ConfigurationError (a float budget or a negative cap would otherwise be
    used as is, or silently mean "no cap")."""
    if not isinstance(model, str) or not model:
        raise ConfigurationError(f"model must be a non-empty string, not {model!r:.60}")
    ints = (
        ("budget", budget, None), ("reserve", reserve, None), ("margin", margin, None),
        ("max_messages", max_messages, 1), ("max_history_tokens", max_history_tokens, 0),
        ("summary_max_tokens", summary_max_tokens, 1), ("page_size", page_size, 0),
    )
    for name, value, low in ints:
        if value is None and name not in ("summary_max_tokens", "page_size"):
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{name} must be an int, not {value!r:.60}")
        if not -(2**63) <= value < 2**63 or (low is not None and value < low):
            floor = f"at least {low}" if low is not None else "within 64 bits"
            raise ConfigurationError(f"{name} must be {floor} (got {value})")
    if truncate is not None and truncate not in ("head", "tail", "middle"):
        raise ConfigurationError(f"truncate must be 'head', 'tail' or 'middle', not {truncate!r:.60}")
    if summary_role not in ("system", "developer", "user"):
        raise ConfigurationError(
            f"summary_role must be 'system', 'developer' or 'user', not {summary_role!r:.60}"
        )
    if template is not None and not isinstance(template, str) and not callable(
        getattr(template, "render", None)
    ):
        raise ConfigurationError(
            "template must be a name, a file path or a PromptTemplate, "
            f"not {type(template).__name__}"
        )
