"""convo: LLM conversations for chatbot backends.

Store (SQL) -> ContextBuilder (token budget) -> Renderer (chat list | flattened
prompt) -> Client (OpenAI-compatible HTTP) -> Store.
"""

from ._exceptions import *  # noqa: F403
from ._exceptions import __all__ as _exc_all
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

__version__ = "0.1.0"

__all__ = sorted(
    [
        *_exc_all,
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
        "__version__",
        "dump_messages",
        "load_messages",
    ]
)
