"""Client overhead: convo vs raw httpx + json vs the official openai package.

One real loopback HTTP server, started in a separate process (so its work does
not compete for this process's GIL), answers every contender the same way:

* ``canned`` (default): a minimal asyncio HTTP/1.1 server returning a fixed
  chat completion, or a fixed 24-event SSE stream when the body asks for
  ``"stream": true``. It costs almost nothing, so the numbers are the clients'.
* ``fake``: ``convo.testing.FakeBackend().serve()`` (real replies, usage
  counting), when that package is available.

Modes: non-streamed and streamed, sync sequential and async with 32 concurrent
workers. Contenders:

* raw: ``httpx`` + ``json.loads`` (for streams: ``iter_lines`` + ``json.loads``
  of each ``data:`` line), the floor for a Python client on httpx;
* convo: ``OpenAIClient.chat`` -> typed ``ChatCompletion``; ``chat_stream``
  -> typed chunks, then ``final()`` (the assembled ``ChatCompletion``). The
  async client splits its connections over several small pools
  (``convo/_client/pool.py``): httpcore's per-request bookkeeping grows with
  the square of a pool's size, which is what the async x32 rows show for raw;
* openai: ``OpenAI().chat.completions.create(...)`` (typed, streamed chunks iterated).

Run::

    /work/venv/bin/python bench/bench_client.py                  # 1,000 requests per cell
    /work/venv/bin/python bench/bench_client.py --server fake -n 300
    /work/venv/bin/python bench/bench_client.py --sse            # SSE decoder on long lines

``--sse`` times the SSE decoder alone on one long ``data:`` line (4 to 32 MB)
arriving in 64 KB pieces, as httpx delivers a body: the time should double
with the size (linear), not quadruple (the decoder before was quadratic:
0.12 / 0.42 / 1.66 / 7.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

MODEL = "gpt-4o-mini"
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    *(
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"Message number {i}: " + "lorem ipsum " * 8,
        }
        for i in range(9)
    ),
]
CONCURRENCY = 32
# raw httpx gets the pool convo uses (httpx's default keeps only 20 idle connections,
# which would make raw reconnect under 32 concurrent requests).
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)

# --- the canned server -------------------------------------------------------------


def _canned_payloads() -> tuple[bytes, bytes]:
    reply = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Sure. " * 40,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 180,
            "completion_tokens": 80,
            "total_tokens": 260,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_bench",
    }
    body = json.dumps(reply).encode()
    head = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
    }
    events = [
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
    ]
    events += [
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": f"word{i} "},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        for i in range(22)
    ]
    events.append(
        {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
    )
    sse = (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )

    def response(content: bytes, ctype: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: "
            + ctype
            + b"\r\ncontent-length: "
            + str(len(content)).encode()
            + b"\r\nx-request-id: req_bench\r\n\r\n"
            + content
        )

    return response(body, b"application/json"), response(sse, b"text/event-stream")


async def _serve_canned() -> None:
    plain, streamed = _canned_payloads()
    length = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = length.search(head)
                body = await reader.readexactly(int(m.group(1))) if m else b""
                writer.write(streamed if b'"stream":true' in body.replace(b" ", b"") else plain)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def _serve_fake() -> None:
    from convo.testing import FakeBackend

    with FakeBackend().serve(host="127.0.0.1", port=0) as server:
        print(server.base_url, flush=True)
        while True:
            time.sleep(3600)


def start_server(kind: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", kind],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    base_url = proc.stdout.readline().strip()
    if not base_url.startswith("http"):
        proc.kill()
        raise SystemExit(f"the {kind} server did not start")
    return proc, base_url


# --- contenders ------------------------------------------------------------------------

SyncCall = Callable[[], Any]
AsyncCall = Callable[[], Awaitable[Any]]


def raw_sync(base_url: str, stream: bool) -> tuple[SyncCall, Callable[[], None]]:
    client = httpx.Client(timeout=600, limits=LIMITS)
    url = base_url + "/chat/completions"
    headers = {"Authorization": "Bearer sk-bench"}
    body = {"model": MODEL, "messages": MESSAGES}
    if not stream:

        def call() -> Any:
            return json.loads(client.post(url, json=body, headers=headers).content)
    else:
        sbody = {**body, "stream": True}

        def call() -> Any:
            out = []
            with client.stream("POST", url, json=sbody, headers=headers) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        out.append(json.loads(line[6:]))
            return out

    return call, client.close


def raw_async(base_url: str, stream: bool) -> tuple[AsyncCall, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(timeout=600, limits=LIMITS)
    url = base_url + "/chat/completions"
    headers = {"Authorization": "Bearer sk-bench"}
    body = {"model": MODEL, "messages": MESSAGES}
    if not stream:

        async def call() -> Any:
            return json.loads((await client.post(url, json=body, headers=headers)).content)
    else:
        sbody = {**body, "stream": True}

        async def call() -> Any:
            out = []
            async with client.stream("POST", url, json=sbody, headers=headers) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        out.append(json.loads(line[6:]))
            return out

    return call, client.aclose


def convo_sync(base_url: str, stream: bool) -> tuple[SyncCall, Callable[[], None]]:
    from convo import OpenAIClient

    client = OpenAIClient(api_key="sk-bench", base_url=base_url)
    if not stream:

        def call() -> Any:
            return client.chat(model=MODEL, messages=MESSAGES)
    else:

        def call() -> Any:
            with client.chat_stream(model=MODEL, messages=MESSAGES) as s:
                for _ in s:
                    pass
                return s.final()

    return call, client.close


def convo_async(base_url: str, stream: bool) -> tuple[AsyncCall, Callable[[], Awaitable[None]]]:
    from convo import AsyncOpenAIClient

    client = AsyncOpenAIClient(api_key="sk-bench", base_url=base_url)
    if not stream:

        async def call() -> Any:
            return await client.chat(model=MODEL, messages=MESSAGES)
    else:

        async def call() -> Any:
            async with await client.chat_stream(model=MODEL, messages=MESSAGES) as s:
                async for _ in s:
                    pass
                return await s.final()

    return call, client.close


def openai_sync(base_url: str, stream: bool) -> tuple[SyncCall, Callable[[], None]]:
    import openai

    client = openai.OpenAI(api_key="sk-bench", base_url=base_url)
    if not stream:

        def call() -> Any:
            return client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    else:

        def call() -> Any:
            with client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as s:  # type: ignore[arg-type]
                return list(s)

    return call, client.close


def openai_async(base_url: str, stream: bool) -> tuple[AsyncCall, Callable[[], Awaitable[None]]]:
    import openai

    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=base_url)
    if not stream:

        async def call() -> Any:
            return await client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    else:

        async def call() -> Any:
            out = []
            s = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
            async with s:
                async for chunk in s:
                    out.append(chunk)
            return out

    return call, client.close


SYNC = {"raw": raw_sync, "convo": convo_sync, "openai": openai_sync}
ASYNC = {"raw": raw_async, "convo": convo_async, "openai": openai_async}


Timing = tuple[float, float]  # (wall seconds, client-process CPU seconds) per request


def _clock() -> Timing:
    return time.perf_counter(), time.process_time()


def _per_request(start: Timing, n: int) -> Timing:
    wall, cpu = _clock()
    return (wall - start[0]) / n, (cpu - start[1]) / n


def time_sync(
    make: Callable[..., tuple[SyncCall, Callable[[], None]]], base_url: str, stream: bool, n: int
) -> Timing:
    call, close = make(base_url, stream)
    try:
        for _ in range(max(20, n // 20)):  # warm up: connections, imports, caches
            call()
        start = _clock()
        for _ in range(n):
            call()
        return _per_request(start, n)
    finally:
        close()


async def _time_async(
    make: Callable[..., tuple[AsyncCall, Callable[[], Awaitable[None]]]],
    base_url: str,
    stream: bool,
    n: int,
) -> Timing:
    call, close = make(base_url, stream)

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    async def run(total: int) -> None:
        per, extra = divmod(total, CONCURRENCY)
        await asyncio.gather(*(worker(per + (i < extra)) for i in range(CONCURRENCY)))

    try:
        await run(max(CONCURRENCY * 2, n // 10))
        start = _clock()
        await run(n)
        return _per_request(start, n)
    finally:
        await close()


def time_async(make: Any, base_url: str, stream: bool, n: int) -> Timing:
    return asyncio.run(_time_async(make, base_url, stream, n))


def bench_sse(rounds: int) -> None:
    """The SSE decoder on one long line: seconds per size, median of ``rounds``."""
    from convo._client.sse import SSEDecoder

    piece = 64 * 1024
    print("## SSE decoder: one long data line in 64 KB pieces\n")
    print("| line | seconds | MB/s |")
    print("|---:|---:|---:|")
    for mb in (4, 8, 16, 32):
        size = mb * 1024 * 1024
        body = b"x" * piece
        times = []
        for _ in range(rounds):
            decoder = SSEDecoder()
            started = time.perf_counter()
            decoder.feed(b"data: " + body[6:])
            for _ in range(size // piece - 1):
                decoder.feed(body)
            (event,) = decoder.feed(b"\n\n")
            times.append(time.perf_counter() - started)
            assert len(event.data) == size - 6
        seconds = statistics.median(times)
        print(f"| {mb} MB | {seconds:.3f} | {mb / seconds:.0f} |")
    command = " ".join(["python bench/bench_client.py", *sys.argv[1:]])
    print(f"\nCommand: `{command}`")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=1000, help="timed requests per cell (default 1000)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds; the median is reported (default 3)"
    )
    parser.add_argument("--server", choices=["canned", "fake"], default="canned")
    parser.add_argument("--serve", choices=["canned", "fake"], help=argparse.SUPPRESS)
    parser.add_argument("--sse", action="store_true", help="time the SSE decoder on long lines")
    args = parser.parse_args()
    if args.sse:
        bench_sse(args.rounds)
        return
    if args.serve == "canned":
        asyncio.run(_serve_canned())
        return
    if args.serve == "fake":
        _serve_fake()
        return

    proc, base_url = start_server(args.server)
    rows = []
    try:
        for mode, stream in (("non-streamed", False), ("streamed", True)):
            for style, table, timer in (
                ("sync sequential", SYNC, time_sync),
                (f"async x{CONCURRENCY}", ASYNC, time_async),
            ):
                samples: dict[str, list[Timing]] = {name: [] for name in table}
                for _ in range(args.rounds):  # interleave contenders so drift hits all alike
                    for name, make in table.items():
                        samples[name].append(timer(make, base_url, stream, args.n))
                med = {
                    name: (
                        statistics.median(t[0] for t in v),
                        statistics.median(t[1] for t in v),
                    )
                    for name, v in samples.items()
                }
                rows.append((mode, style, med))
                print(
                    f"# {mode:12} {style:16} "
                    + "  ".join(
                        f"{k}={w * 1e6:7.0f}us wall {c * 1e6:7.0f}us cpu"
                        for k, (w, c) in med.items()
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        proc.terminate()
        proc.wait()

    import platform

    import openai

    print(
        f"## Client overhead: {args.n} requests per cell, median of {args.rounds} rounds, "
        f"{args.server} loopback server in its own process\n"
    )
    print(
        f"Python {platform.python_version()}, httpx {httpx.__version__}, openai {openai.__version__}\n"
    )
    print(
        "Wall: elapsed time per request. CPU: this process's CPU time per request (the server "
        "runs in another process), the client's own cost, least disturbed by other load on "
        "the machine.\n"
    )
    print(
        "| request | client use | raw httpx+json wall / CPU (µs) | convo wall / CPU (µs) "
        "| openai wall / CPU (µs) | convo / raw wall, CPU | convo / openai wall, CPU |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode, style, med in rows:
        (rw, rc), (cw, cc), (ow, oc) = med["raw"], med["convo"], med["openai"]
        print(
            f"| {mode} | {style} | {rw * 1e6:.0f} / {rc * 1e6:.0f} | {cw * 1e6:.0f} / {cc * 1e6:.0f} "
            f"| {ow * 1e6:.0f} / {oc * 1e6:.0f} | {cw / rw:.2f}x, {cc / rc:.2f}x "
            f"| {cw / ow:.2f}x, {cc / oc:.2f}x |"
        )
    command = " ".join(["python bench/bench_client.py", *sys.argv[1:]])
    print(f"\nCommand: `{command}`")


if __name__ == "__main__":
    main()
