"""The capacity bench's own HTTP client (tests/bench/loadgen.py, GET workload on http://):
it reads whole responses on kept-alive connections, counts non-200 answers as errors, and
stays open loop: a request that waits for a connection has the wait in its latency."""

from __future__ import annotations

import asyncio

from tests.bench import loadgen


async def _serve(delay: float, status: int = 200):  # noqa: ANN202
    served = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            served.append(head.split(b"\r\n", 1)[0])
            await asyncio.sleep(delay)
            body = b'{"ok": true}'
            writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))
            await writer.drain()

    async def guarded(reader, writer) -> None:  # noqa: ANN001
        try:
            await handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], served


def test_a_slow_server_shows_its_queue_in_the_latency_and_keeps_connections():
    async def scenario() -> tuple[dict, list]:
        server, port, served = await _serve(delay=0.05)
        async with server:
            # 40 requests/s offered to one connection that answers 20/s: a queue builds.
            result = await loadgen.run_get(f"http://127.0.0.1:{port}", ["T"], "/api/v1/batches/1",
                                           rate=40, duration=1.0, connections=1, warmup=0.0)
        return result, served

    result, served = asyncio.run(scenario())
    assert result["requests_ok"] == 40 and result["errors"] == 0
    assert served[0] == b"GET /api/v1/batches/1 HTTP/1.1"
    # Served one at a time, 50 ms each: the last waited ~1 s after its scheduled start.
    assert result["max_ms"] > 800
    assert result["p50_ms"] > 200


def test_answers_other_than_200_are_errors():
    async def scenario() -> dict:
        server, port, _ = await _serve(delay=0.0, status=503)
        async with server:
            return await loadgen.run_get(f"http://127.0.0.1:{port}", ["T"], "/x", rate=50,
                                         duration=0.2, warmup=0.0)

    result = asyncio.run(scenario())
    assert result["requests_ok"] == 0 and result["errors_by_kind"] == {"GET 503": 10}


async def _tus_server(offset_answer: int | None = None):  # noqa: ANN202
    """A minimal tus server: creation (with or without the body) and PATCH, recording each
    request's method and body size; ``offset_answer`` overrides the Upload-Offset it says."""
    from aiohttp import web

    seen: list[tuple[str, int]] = []

    async def create(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(("POST", len(body)))
        offset = len(body) if offset_answer is None else offset_answer
        return web.Response(status=201, headers={"Location": f"/api/v1/files/u{len(seen)}",
                                                 "Upload-Offset": str(offset)})

    async def patch(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(("PATCH", len(body)))
        return web.Response(status=204, headers={"Upload-Offset": str(len(body))})

    app = web.Application()
    app.router.add_post("/api/v1/files", create)
    app.router.add_patch("/api/v1/files/{upload}", patch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the port it picked
    return runner, f"http://127.0.0.1:{port}", seen


def _tus(with_upload: bool, offset_answer: int | None = None) -> tuple[dict, list]:
    async def scenario() -> tuple[dict, list]:
        runner, url, seen = await _tus_server(offset_answer)
        try:
            result = await loadgen.run_tus(url, ["T"], [7], clients=4, period=0.2, duration=0.4,
                                           payload=b"x" * 1000, with_upload=with_upload)
        finally:
            await runner.cleanup()
        return result, seen

    return asyncio.run(scenario())


def test_tus_files_are_a_creation_and_a_patch_by_default():
    result, seen = _tus(with_upload=False)
    assert result["files_accepted"] == result["files_offered"] == 8 and result["errors"] == 0
    assert sorted(seen) == [("PATCH", 1000)] * 8 + [("POST", 0)] * 8
    assert result["requests_ok"] == 16 and result["shape"] == "creation + one PATCH a file"


def test_tus_with_upload_sends_each_file_in_its_creating_post():
    result, seen = _tus(with_upload=True)
    assert seen == [("POST", 1000)] * 8
    assert result["files_accepted"] == result["files_offered"] == 8 and result["errors"] == 0
    assert result["requests_ok"] == 8 and result["file"]["count"] == 8
    assert result["shape"] == "creation-with-upload: one POST a file"


def test_a_creation_with_upload_that_kept_less_than_the_file_is_an_error():
    result, _ = _tus(with_upload=True, offset_answer=0)
    assert result["files_accepted"] == 0 and result["errors_by_kind"] == {"POST+upload 201": 8}
