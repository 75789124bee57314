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
from ._async_replayer import (
    AsyncReplayer,
)
from ._async_store import (
    AsyncStore,
)
from ._async_turns import (
    AsyncChat,
    AsyncTurnStream,
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
from ._client_core import (
    Endpoint,
    RequestStats,
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
    StoreError,
    StoreInputError,
    TemplateError,
    TokenizerError,
    TurnCancelled,
    UnknownModelError,
    UnprocessableEntityError,
)
from ._export import (
    ExportFormat,
    ExportStats,
    export_conversations,
    export_conversations_async,
)
from ._import import (
    ImportStats,
    import_conversations,
    import_conversations_async,
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
    Run,
    RunPage,
    RunStatus,
    StoredMessage,
    Summary,
)
from ._replay_plan import (
    Arm,
    ArmSummary,
    ReplayProgress,
    ReplayReport,
)
from ._replayer import (
    Replayer,
)
from ._reproduce import (
    Reproduction,
)
from ._store import (
    Store,
)
from ._store_branches import (
    Branch,
)
from ._store_core import (
    ConversationPage,
)
from ._store_replays import (
    Replay,
    ReplayItem,
    ReplayPage,
)
from ._store_runs import (
    FinishedRun,
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
from ._tools import (
    Tool,
    ToolArgumentsError,
    tool,
)
from ._turn_plan import (
    TextDelta,
    ToolCallDelta,
    ToolResultEvent,
    TurnEvent,
    TurnResult,
)
from ._turns import (
    Chat,
    TurnStream,
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
