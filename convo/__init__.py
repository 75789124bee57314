"""convo: LLM conversations for chatbot backends.

Store (SQL) -> ContextBuilder (token budget) -> Renderer (chat list | flattened
prompt) -> Client (OpenAI-compatible HTTP) -> Store.
"""

from ._async_client import AsyncChatCompletionStream, AsyncCompletionStream, AsyncOpenAIClient
from ._async_store import AsyncStore
from ._chat_render import ChatProfile, render_chat
from ._context import AsyncContextBuilder, ContextBuilder
from ._context_report import Context, ContextReport, SummaryUse, TruncationReport
from ._client import ChatCompletionStream, CompletionStream, OpenAIClient
from ._encodings import get_encoding, register_encoding
from ._exceptions import *  # noqa: F403
from ._exceptions import __all__ as _exc_all
from ._jinja import JinjaChatTemplate
from ._messages import (
    ContentPart,
    FunctionCall,
    ImagePart,
    ImageURL,
    InputAudio,
    InputAudioPart,
    Message,
    RefusalPart,
    Role,
    TextPart,
    ToolCall,
    dump_messages,
    load_messages,
)
from ._records import Conversation, ReplyInfo, StoredMessage, Summary
from ._store import Store
from ._summary import AsyncModelSummarizer, AsyncSummarizer, ModelSummarizer, Summarizer
from ._models import ModelInfo, ModelRegistry, budget_for, models
from ._templates import BUILTIN_TEMPLATES, PromptTemplate, get_template
from ._tokens import TokenCounter, count_tokens, encoding_for_model
from ._types import ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk, Usage

__version__ = "0.1.0"

__all__ = sorted(
    [
        *_exc_all,
        "AsyncContextBuilder",
        "AsyncModelSummarizer",
        "AsyncStore",
        "AsyncSummarizer",
        "Context",
        "ContextBuilder",
        "ContextReport",
        "Conversation",
        "ModelSummarizer",
        "ReplyInfo",
        "Store",
        "StoredMessage",
        "Summarizer",
        "Summary",
        "SummaryUse",
        "TruncationReport",
        "BUILTIN_TEMPLATES",
        "ChatProfile",
        "JinjaChatTemplate",
        "PromptTemplate",
        "get_template",
        "render_chat",
        "AsyncChatCompletionStream",
        "AsyncCompletionStream",
        "AsyncOpenAIClient",
        "ChatCompletion",
        "ChatCompletionChunk",
        "ChatCompletionStream",
        "Completion",
        "CompletionChunk",
        "CompletionStream",
        "OpenAIClient",
        "Usage",
        "ContentPart",
        "FunctionCall",
        "ImagePart",
        "ImageURL",
        "InputAudio",
        "InputAudioPart",
        "Message",
        "RefusalPart",
        "Role",
        "TextPart",
        "ToolCall",
        "ModelInfo",
        "ModelRegistry",
        "TokenCounter",
        "budget_for",
        "count_tokens",
        "encoding_for_model",
        "get_encoding",
        "models",
        "register_encoding",
        "__version__",
        "dump_messages",
        "load_messages",
    ]
)
