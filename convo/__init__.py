"""convo: LLM conversations for chatbot backends.

Store (SQL) -> ContextBuilder (token budget) -> Renderer (chat list | flattened
prompt) -> Client (OpenAI-compatible HTTP) -> Store.

Everything public is re-exported here; the modules behind it are private.
"""

from ._client.async_client import (
    AsyncChatCompletionStream,
    AsyncCompletionStream,
    AsyncOpenAIClient,
)
from ._client.client import (
    ChatCompletionStream,
    CompletionStream,
    OpenAIClient,
)
from ._client.core import (
    Endpoint,
    RequestStats,
)
from ._client.types import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    Usage,
)
from ._context.builder import (
    AsyncContextBuilder,
    ContextBuilder,
)
from ._context.report import (
    Context,
    ContextReport,
    SummaryUse,
    TruncationReport,
)
from ._context.summarizer import (
    AsyncModelSummarizer,
    AsyncSummarizer,
    ModelSummarizer,
    Summarizer,
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
    ImportValidationError,
    InternalServerError,
    InvalidMessageError,
    MessageNotFound,
    NotFoundError,
    NotMigratedError,
    PermissionDeniedError,
    RateLimitError,
    ReadOnlyStoreError,
    ReplayNotFound,
    RunNotFound,
    StoredDataError,
    StoreError,
    StoreInputError,
    TemplateError,
    TokenizerError,
    TurnCancelled,
    UnknownModelError,
    UnprocessableEntityError,
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
    Run,
    RunPage,
    RunStatus,
    StoredMessage,
    Summary,
)
from ._render.chat import (
    ChatProfile,
    render_chat,
)
from ._render.jinja import (
    JinjaChatTemplate,
)
from ._render.templates import (
    BUILTIN_TEMPLATES,
    PromptTemplate,
    get_template,
)
from ._replay.async_replayer import (
    AsyncReplayer,
)
from ._replay.plan import (
    Arm,
    ArmSummary,
    ReplayProgress,
    ReplayReport,
)
from ._replay.replayer import (
    Replayer,
)
from ._replay.reproduce import (
    Reproduction,
)
from ._store.async_store import (
    AsyncStore,
)
from ._store.branches import (
    Branch,
)
from ._store.core import (
    ConversationPage,
)
from ._store.replays import (
    Replay,
    ReplayItem,
    ReplayPage,
)
from ._store.runs import (
    FinishedRun,
)
from ._store.store import (
    Store,
)
from ._tokens.counter import (
    TokenCounter,
    count_tokens,
    encoding_for_model,
)
from ._tokens.encodings import (
    get_encoding,
    register_encoding,
)
from ._transfer.exporter import (
    ExportFormat,
    ExportStats,
    export_conversations,
    export_conversations_async,
)
from ._transfer.importer import (
    ImportStats,
    import_conversations,
    import_conversations_async,
)
from ._turns.async_chat import (
    AsyncChat,
    AsyncTurnStream,
)
from ._turns.chat import (
    Chat,
    TurnStream,
)
from ._turns.plan import (
    TextDelta,
    ToolCallDelta,
    ToolResultEvent,
    TurnEvent,
    TurnResult,
)
from ._turns.tools import (
    Tool,
    ToolArgumentsError,
    tool,
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
    "Arm",
    "ArmSummary",
    "AsyncChat",
    "AsyncChatCompletionStream",
    "AsyncCompletionStream",
    "AsyncContextBuilder",
    "AsyncModelSummarizer",
    "AsyncOpenAIClient",
    "AsyncReplayer",
    "AsyncStore",
    "AsyncSummarizer",
    "AsyncTurnStream",
    "AuthenticationError",
    "BadRequestError",
    "Branch",
    "Chat",
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
    "Endpoint",
    "ExportFormat",
    "ExportStats",
    "FinishedRun",
    "ForkConflictError",
    "FunctionCall",
    "ImagePart",
    "ImageURL",
    "ImportStats",
    "ImportValidationError",
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
    "ReadOnlyStoreError",
    "RefusalPart",
    "Replay",
    "ReplayItem",
    "ReplayNotFound",
    "ReplayPage",
    "ReplayProgress",
    "ReplayReport",
    "Replayer",
    "ReplyInfo",
    "Reproduction",
    "RequestStats",
    "Role",
    "Run",
    "RunNotFound",
    "RunPage",
    "RunStatus",
    "Store",
    "StoreError",
    "StoreInputError",
    "StoredDataError",
    "StoredMessage",
    "Summarizer",
    "Summary",
    "SummaryUse",
    "TemplateError",
    "TextDelta",
    "TextPart",
    "TokenCounter",
    "TokenizerError",
    "Tool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolCallDelta",
    "ToolResultEvent",
    "TruncationReport",
    "TurnCancelled",
    "TurnEvent",
    "TurnResult",
    "TurnStream",
    "UnknownModelError",
    "UnprocessableEntityError",
    "Usage",
    "__version__",
    "budget_for",
    "count_tokens",
    "dump_messages",
    "encoding_for_model",
    "export_conversations",
    "export_conversations_async",
    "get_encoding",
    "get_template",
    "import_conversations",
    "import_conversations_async",
    "load_messages",
    "models",
    "register_encoding",
    "render_chat",
    "tool",
]
