"""ContextBuilder / AsyncContextBuilder: a stored conversation -> what the model sees.

Both drive the same pure plan (:mod:`convo._context_plan`); they only answer
its I/O requests with store and summarizer calls. Each store call is its own
short transaction, so no transaction is ever held open across a summarizer's
HTTP call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ._context_plan import BuildConfig, plan_build, run_async, run_sync, store_call
from ._context_report import Context
from ._exceptions import ConfigurationError
from ._messages import Message
from ._selection import TruncateMode

if TYPE_CHECKING:
    from ._async_store import AsyncStore
    from ._chat_render import ChatProfile
    from ._models import ModelRegistry
    from ._store import Store
    from ._summary import AsyncSummarizer, Summarizer
    from ._templates import PromptTemplate

__all__ = ["AsyncContextBuilder", "ContextBuilder"]

Mode = Literal["chat", "completion"]


class _BuilderBase:
    """Configuration shared by both builders (pure: resolves models, budgets, renderers)."""

    def __init__(
        self,
        *,
        model: str,
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
        registry: ModelRegistry | None = None,
        page_size: int = 0,
    ) -> None:
        from ._encodings import get_encoding
        from ._models import DEFAULT_MARGIN, budget_for
        from ._models import models as default_registry
        from ._tokens import TokenCounter

        if mode not in ("chat", "completion"):
            raise ConfigurationError(f"mode must be 'chat' or 'completion', not {mode!r}")
        _check_options(
            model=model, budget=budget, reserve=reserve, margin=margin,
            max_messages=max_messages, max_history_tokens=max_history_tokens, truncate=truncate,
            summary_max_tokens=summary_max_tokens, summary_role=summary_role,
            page_size=page_size, template=template,
        )
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
        self._template: Any = None
        if mode == "completion":
            from ._templates import get_template

            tpl = template if template is not None else "transcript"
            self._template = get_template(tpl) if isinstance(tpl, str) else tpl
        elif template is not None:
            raise ConfigurationError("template= only applies to mode='completion'")
        from ._chat_render import ChatProfile, render_chat

        prof = profile if profile is not None else ChatProfile.openai()
        # Stored counts are of the messages as OpenAI takes them; a profile that
        # rewrites messages (names dropped, parts flattened...) is counted again
        # on what it renders, so the reported tokens stay exact.
        self._recount = mode == "completion" or prof != ChatProfile.openai()
        self._render_chat: Callable[[Sequence[Message]], list[dict[str, Any]]] = lambda msgs: (
            render_chat(msgs, prof)
        )
        self.max_messages = max_messages
        self.max_history_tokens = max_history_tokens
        self.truncate = truncate
        self.summary_max_tokens = summary_max_tokens
        self.summary_role = summary_role
        self.page_size = page_size

    def _config(
        self,
        conversation_id: str,
        *,
        tools: list[dict[str, Any]] | None,
        response_format: dict[str, Any] | None,
        summarizing: bool,
    ) -> BuildConfig:
        if tools is not None and not isinstance(tools, list):
            raise ConfigurationError(f"tools must be a list of tool definitions, not {type(tools).__name__}")
        if response_format is not None and not isinstance(response_format, dict):
            raise ConfigurationError(
                f"response_format must be a dict, not {type(response_format).__name__}"
            )
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
        )


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


class ContextBuilder(_BuilderBase):
    """Builds the context of a stored conversation for one model (sync).

    Args:
        store: the :class:`~convo.Store` to read from.
        model: the model the context is for (its encoding and window come from
            the registry; pass ``encoding=`` for models it does not know).
        mode: ``"chat"`` (a message list) or ``"completion"`` (one flattened prompt).
        template: the completion template: a built-in name, a .jinja file,
            a tokenizer_config.json, or a :class:`~convo.PromptTemplate`.
        profile: the chat capability profile of the target server.
        budget: an explicit prompt token budget; otherwise the model's window
            minus ``reserve`` (reply tokens) minus ``margin``.
        max_messages / max_history_tokens: optional caps on history.
        truncate: allow shortening an over-long newest user message
            (``"head"``, ``"tail"`` or ``"middle"`` is what is kept).
        summarizer: summarizes dropped history; summaries are stored and reused.
        summary_max_tokens: room held for the summary, and its length limit.

    Example::

        builder = ContextBuilder(store, model="gpt-4o-mini")
        ctx = builder.build(conversation_id)
        ctx.request()          # {"model": ..., "messages": [...]}
        ctx.report.dropped_count
    """

    def __init__(
        self, store: Store, *, summarizer: Summarizer | None = None, **options: Any
    ) -> None:
        super().__init__(**options)
        self.store = store
        self.summarizer = summarizer

    def build(
        self,
        conversation_id: str,
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
        owner: str | None = None,
    ) -> Context:
        """Build the context of ``conversation_id``; see :class:`~convo.ContextReport`."""
        cfg = self._config(
            conversation_id,
            tools=tools,
            response_format=response_format,
            summarizing=self.summarizer is not None,
        )

        targets = {"store": self.store, "summarizer": self.summarizer}
        enc = cfg.counter.encoding_name

        def handle(op: Any) -> Any:
            target, method, args, kwargs = store_call(op, conversation_id, owner, enc)
            return getattr(targets[target], method)(*args, **kwargs)

        return run_sync(plan_build(cfg), handle)


class AsyncContextBuilder(_BuilderBase):
    """:class:`ContextBuilder` over an :class:`~convo.AsyncStore`; ``build`` is awaited."""

    def __init__(
        self, store: AsyncStore, *, summarizer: AsyncSummarizer | None = None, **options: Any
    ) -> None:
        super().__init__(**options)
        self.store = store
        self.summarizer = summarizer

    async def build(
        self,
        conversation_id: str,
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
        owner: str | None = None,
    ) -> Context:
        """Build the context of ``conversation_id``; see :class:`~convo.ContextReport`."""
        cfg = self._config(
            conversation_id,
            tools=tools,
            response_format=response_format,
            summarizing=self.summarizer is not None,
        )

        targets = {"store": self.store, "summarizer": self.summarizer}
        enc = cfg.counter.encoding_name

        async def handle(op: Any) -> Any:
            target, method, args, kwargs = store_call(op, conversation_id, owner, enc)
            return await getattr(targets[target], method)(*args, **kwargs)

        return await run_async(plan_build(cfg), handle)
