"""convo.testing: a fake OpenAI-compatible backend for tests.

It speaks OpenAI's exact wire format, in process (an ``httpx`` transport) or
over real HTTP on loopback, with deterministic default replies, scripted
replies, streaming, usage computed with convo's token counting, OpenAI's
request validation and error objects, and failures on demand::

    from convo.testing import FakeBackend

    fake = FakeBackend()
    fake.reply("Hello!")                                # the next reply
    fake.reply_tool_calls([("get_weather", {"city": "Paris"})])
    fake.fail(429, headers={"retry-after": "0.05"})     # then a rate limit

    http = httpx.Client(transport=fake.transport(), base_url="http://fake/v1")
    with fake.serve() as server:                        # or a real server
        openai.OpenAI(base_url=server.base_url, api_key="test")

    fake.requests[0].json["messages"]                   # what was sent

``TricklingServer`` answers slowly (headers or body one byte at a time, a
stream of keep-alive pings), for testing deadlines and idle timeouts.

Without a scripted reply, chat answers ``"You said: <last user text>"`` and
completions ``" You said: <last prompt line>"``.
"""

from ._backend import FakeBackend, FinishReason, RecordedRequest, ToolCallSpec
from ._server import FakeServer, serve_forever
from ._trickle import TricklingServer

__all__ = [
    "FakeBackend",
    "FakeServer",
    "FinishReason",
    "RecordedRequest",
    "ToolCallSpec",
    "TricklingServer",
    "serve_forever",
]
