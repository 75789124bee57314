"""convo: LLM conversations for chatbot backends.

Store (SQL) -> ContextBuilder (token budget) -> Renderer (chat list | flattened
prompt) -> Client (OpenAI-compatible HTTP) -> Store.

Everything public is re-exported here; the modules behind it are private.
"""

from ._async_client import (
    AsyncChatCompletionStream,
    AsyncCompletionStream,
    AsyncOpenAIClient,
)
from ._async_store import (
    AsyncStore,
)
from ._chat_render import (
    ChatProfile,
    render_chat,
)
from ._client import (
    ChatCompletionStream,
    CompletionStream,
    OpenAIClient,
)
from ._context import (
    AsyncContextBuilder,
    ContextBuilder,
)
from ._context_report import (
    Context,
    ContextReport,
    SummaryUse,
    TruncationReport,
)
from ._encodings import (
    get_encoding,
    register_encoding,
)
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseTooLargeError,
    APIResponseValidationError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    ContextError,
    ContextOverflowError,
    ConversationNotFound,
    ConvoError,
    EncodingUnavailableError,
    ForkConflictError,
    InternalServerError,
    InvalidMessageError,
    MessageNotFound,
    NotFoundError,
    NotMigratedError,
    PermissionDeniedError,
    RateLimitError,
    StoreError,
    StoreInputError,
    TemplateError,
    TokenizerError,
    UnknownModelError,
    UnprocessableEntityError,
)
from ._jinja import (
    JinjaChatTemplate,
)
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
from ._models import (
    ModelInfo,
    ModelRegistry,
    budget_for,
    models,
)
from ._records import (
    Conversation,
    ReplyInfo,
    StoredMessage,
    Summary,
)
from ._store import (
    Store,
)
from ._store_core import (
    ConversationPage,
)
from ._summary import (
    AsyncModelSummarizer,
    AsyncSummarizer,
    ModelSummarizer,
    Summarizer,
)
from ._templates import (
    BUILTIN_TEMPLATES,
    PromptTemplate,
    get_template,
)
from ._tokens import (
    TokenCounter,
    count_tokens,
    encoding_for_model,
)
from ._types import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_TEMPLATES",
    "APIConnectionError",
    "APIError",
    "APIResponseTooLargeError",
    "APIResponseValidationError",
    "APIStatusError",
    "APIStreamError",
    "APITimeoutError",
    "AsyncChatCompletionStream",
    "AsyncCompletionStream",
    "AsyncContextBuilder",
    "AsyncModelSummarizer",
    "AsyncOpenAIClient",
    "AsyncStore",
    "AsyncSummarizer",
    "AuthenticationError",
    "BadRequestError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionStream",
    "ChatProfile",
    "Completion",
    "CompletionChunk",
    "CompletionStream",
    "ConfigurationError",
    "ConflictError",
    "ContentPart",
    "Context",
    "ContextBuilder",
    "ContextError",
    "ContextOverflowError",
    "ContextReport",
    "Conversation",
    "ConversationNotFound",
    "ConversationPage",
    "ConvoError",
    "EncodingUnavailableError",
    "ForkConflictError",
    "FunctionCall",
    "ImagePart",
    "ImageURL",
    "InputAudio",
    "InputAudioPart",
    "InternalServerError",
    "InvalidMessageError",
    "JinjaChatTemplate",
    "Message",
    "MessageNotFound",
    "ModelInfo",
    "ModelRegistry",
    "ModelSummarizer",
    "NotFoundError",
    "NotMigratedError",
    "OpenAIClient",
    "PermissionDeniedError",
    "PromptTemplate",
    "RateLimitError",
    "RefusalPart",
    "ReplyInfo",
    "Role",
    "Store",
    "StoreError",
    "StoreInputError",
    "StoredMessage",
    "Summarizer",
    "Summary",
    "SummaryUse",
    "TemplateError",
    "TextPart",
    "TokenCounter",
    "TokenizerError",
    "ToolCall",
    "TruncationReport",
    "UnknownModelError",
    "UnprocessableEntityError",
    "Usage",
    "__version__",
    "budget_for",
    "count_tokens",
    "dump_messages",
    "encoding_for_model",
    "get_encoding",
    "get_template",
    "load_messages",
    "models",
    "register_encoding",
    "render_chat",
]
