"""An open-loop load generator for any RelayPACS deployment: point it at a URL with a token.

Open loop: every request (or file) has a scheduled start time fixed before the run, and its
latency is counted from that scheduled time, not from when the generator got round to
sending it. A server that falls behind therefore shows its queue in the figures instead of
slowing the generator down and hiding it (the "coordinated omission" of closed-loop tools).

Two workloads:

``get``  authenticated ``GET /api/v1/batches/ID`` at a fixed rate (requests/s) for a duration:
         the per-request cost of an authenticated read (an empty batch), and of a realistic
         one (a batch of hundreds of files) beside it.
``tus``  N concurrent tus 1.0 clients, each uploading one file every ``--period`` seconds
         (the pace of a clinic's uploader with think time between files), so N / period
         files/s are offered. Two shapes of a file: by default creation, then the whole file
         in one PATCH (two requests, as tuspy and tus-js-client send by default); with
         ``--with-upload`` tus creation-with-upload, the file in the creating POST (one
         request, as the gateway's own web page and CLI send a small file), accepted when
         the 201 says ``Upload-Offset`` = its length. Request latency: the creation counts
         from the file's scheduled start, the PATCH from when it was sent.
         The link is whatever lies between the generator and the server (loopback in the
         repository's benchmark); the generator does not shape it.

Each prints requests/s, P50/P95/P99 and errors (by status) as one JSON document.

    python -m tests.bench.loadgen --url https://gateway.example --token T get --batch 12 \
        --rate 1000 --duration 20
    python -m tests.bench.loadgen --url https://gateway.example --token T tus --clients 200 \
        --period 1 --size 40000 --duration 30          # opens its own batch
    python -m tests.bench.loadgen --url https://gateway.example --token T tus --with-upload \
        --clients 200 --period 1 --size 40000 --duration 30

Several ``--token`` options spread the clients over several users (each user has its own
rate limits). The uploaded files are random bytes unless ``--file`` names a real one: on a
production deployment use a test facility, since its workers will quarantine them.
asyncio + aiohttp in one process: on loopback it sends about 3,000 requests/s per core, so it
is not the bottleneck of a 2-core test (its CPU time is printed beside the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

TUS = {"Tus-Resumable": "1.0.0"}


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


@dataclass
class Tally:
    """Latencies (seconds) of answered requests and the failures, by kind of request."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    started: float = 0.0
    finished: float = 0.0

    def ok(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)

    def fail(self, kind: str, what: str) -> None:
        self.errors[f"{kind} {what}"] += 1

    def summary(self, **extra: object) -> dict:
        wall = max(self.finished - self.started, 1e-9)
        everything = [s for values in self.latencies.values() for s in values]
        out: dict = {
            **extra,
            "wall_seconds": round(wall, 2),
            "requests_ok": len(everything),
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "requests_per_s": round(len(everything) / wall, 1),
            **_percentiles("", everything),
        }
        if len(self.latencies) > 1:
            for kind, values in sorted(self.latencies.items()):
                out[kind] = {"count": len(values), **_percentiles("", values)}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["generator_cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
        return out


def _percentiles(prefix: str, values: Sequence[float]) -> dict[str, float]:
    return {f"{prefix}{name}_ms": round(percentile(values, pct) * 1000, 1)
            for name, pct in (("p50", 50), ("p95", 95), ("p99", 99))} | {
        f"{prefix}max_ms": round(max(values, default=0.0) * 1000, 1)}


def _session(tokens: Sequence[str], connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections,
                                     force_close=False, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=60)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


# --------------------------------------------------------------------------- GET


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection carrying one request at a time: the GET workload's
    client on plain http. It reads each whole response (status line, headers, a
    Content-Length body) and costs the generator about a fifth of aiohttp's CPU per request,
    which on a machine whose cores the server shares is capacity the server gets back."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.open = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("connection closed by the server"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            waiter.set_exception(ValueError("response without Content-Length"))
            return
        line_end = head.find(b"\r\n", at + 17)
        length = int(head[at + 17:line_end if line_end > 0 else len(head)].strip() or 0)
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[:end + 4 + length]
        if b"\r\nconnection: close" in head:
            self.open = False
        waiter.set_result(int(head[9:12]))

    async def send(self, request: bytes) -> int:
        self.waiter = self.loop.create_future()
        self.transport.write(request)  # type: ignore[union-attr]
        return await self.waiter


class _RawClient:
    """At most ``limit`` connections to one http:// server, reused; a request waits for a
    free one (that wait counts in its latency, as the open loop requires)."""

    def __init__(self, url: str, limit: int) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.netloc = parts.netloc
        self.limit = limit
        self.idle: list[_Connection] = []
        self.opened = 0
        self.free: asyncio.Queue[_Connection | None] = asyncio.Queue()

    def request(self, path: str, token: str) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {self.netloc}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n").encode()

    async def _connection(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if conn.open:
                return conn
            self.opened -= 1
        if self.opened < self.limit:
            self.opened += 1
            loop = asyncio.get_running_loop()
            try:
                _, conn = await loop.create_connection(lambda: _Connection(loop), self.host, self.port)
            except OSError:
                self.opened -= 1
                raise
            return conn
        conn = await self.free.get()
        return conn if conn is not None and conn.open else await self._connection()

    def _release(self, conn: _Connection) -> None:
        if not conn.open:
            self.opened -= 1
            if conn.transport is not None:
                conn.transport.close()
            if self.free._getters:  # noqa: SLF001 - a waiting request may open a new one
                self.free.put_nowait(None)
            return
        if self.free._getters:  # noqa: SLF001 - hand it straight to a waiting request
            self.free.put_nowait(conn)
        else:
            self.idle.append(conn)

    async def get(self, request: bytes) -> int:
        conn = await self._connection()
        try:
            return await conn.send(request)
        except BaseException:
            conn.open = False
            raise
        finally:
            self._release(conn)

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


async def _open_loop(loop: asyncio.AbstractEventLoop, tally: Tally, rate: float, duration: float,
                     warmup: float, one: Callable[[int, float, bool], Awaitable[None]]) -> set[asyncio.Task]:
    """Start ``one(i, scheduled, counted)`` at ``rate`` per second on a schedule fixed in
    advance (open loop: a slow answer never delays the next start), the first ``warmup``
    seconds' worth not counted; returns the requests still in flight when the last started."""
    pending: set[asyncio.Task] = set()
    start = loop.time() + 0.05
    total = int((warmup + duration) * rate)
    counted_from = int(warmup * rate)
    for i in range(total):
        scheduled = start + i / rate
        await _sleep_until(loop, scheduled)
        if i == counted_from:
            tally.started = loop.time()
        task = loop.create_task(one(i, scheduled, i >= counted_from))
        pending.add(task)
        task.add_done_callback(pending.discard)
    return pending


async def run_get(url: str, tokens: Sequence[str], path: str, rate: float, duration: float,
                  connections: int = 256, warmup: float = 2.0, client: str = "raw") -> dict:
    """``rate`` GETs of ``path`` per second for ``duration`` seconds after ``warmup`` seconds at
    the same rate that are not counted (connections open, caches fill). ``client``: "raw"
    (the lean HTTP/1.1 client above; http:// only) or "aiohttp"."""
    if client == "raw" and url.startswith("http://"):
        return await _run_get_raw(url, tokens, path, rate, duration, connections, warmup)
    tally = Tally()
    loop = asyncio.get_running_loop()
    async with _session(tokens, connections) as http:
        headers = [{"Authorization": f"Bearer {t}"} for t in tokens]

        async def one(index: int, scheduled: float, counted: bool) -> None:
            try:
                async with http.get(url + path, headers=headers[index % len(headers)]) as resp:
                    await resp.read()
                    if resp.status != 200:
                        if counted:
                            tally.fail("GET", str(resp.status))
                        return
            except (TimeoutError, aiohttp.ClientError) as exc:
                if counted:
                    tally.fail("GET", type(exc).__name__)
                return
            if counted:
                tally.ok("GET", loop.time() - scheduled)

        pending = await _open_loop(loop, tally, rate, duration, warmup, one)
        await asyncio.gather(*pending)
        tally.finished = loop.time()
    return tally.summary(workload="GET " + path, offered_per_s=rate, duration_s=duration)


async def _run_get_raw(url: str, tokens: Sequence[str], path: str, rate: float, duration: float,
                       connections: int, warmup: float) -> dict:
    tally = Tally()
    loop = asyncio.get_running_loop()
    raw = _RawClient(url, connections)
    requests = [raw.request(path, t) for t in tokens]

    async def one(index: int, scheduled: float, counted: bool) -> None:
        try:
            status = await raw.get(requests[index % len(requests)])
        except (OSError, ValueError) as exc:
            if counted:
                tally.fail("GET", type(exc).__name__)
            return
        if counted:
            if status == 200:
                tally.ok("GET", loop.time() - scheduled)
            else:
                tally.fail("GET", str(status))

    pending = await _open_loop(loop, tally, rate, duration, warmup, one)
    if pending:
        _, late = await asyncio.wait(set(pending), timeout=60)
        for task in late:
            task.cancel()
            tally.fail("GET", "timeout")
    tally.finished = loop.time()
    raw.close()
    return tally.summary(workload="GET " + path, offered_per_s=rate, duration_s=duration,
                         client="raw HTTP/1.1 keep-alive")


# --------------------------------------------------------------------------- tus


def _metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def open_batch(url: str, token: str, label: str) -> int:
    async with aiohttp.ClientSession() as http, http.post(
            f"{url}/api/v1/batches", json={"label": label},
            headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"opening a batch answered {resp.status}: {body}")
        return int(body["id"])


async def run_tus(url: str, tokens: Sequence[str], batch_ids: Sequence[int], clients: int,
                  period: float, duration: float, payload: bytes, warmup: float = 0.0,
                  with_upload: bool = False) -> dict:
    """``clients`` tus clients, client c using ``tokens[c % len]`` and ``batch_ids[c % len]``;
    each starts a file every ``period`` seconds (spread evenly over the first period) until
    ``duration`` seconds have passed; a client that falls behind starts its next file as soon
    as the last one is done, and the lateness counts in the creation's latency.
    ``with_upload``: each file is one creation-with-upload POST instead of a creation and a
    PATCH."""
    tally = Tally()
    files_done = Counter()
    loop = asyncio.get_running_loop()
    per_client = max(1, int(duration / period))
    send = _send_with_upload if with_upload else _send_create_then_patch
    async with _session(tokens, clients * 2) as http:

        async def client(c: int) -> None:
            auth = {"Authorization": f"Bearer {tokens[c % len(tokens)]}", **TUS}
            batch = str(batch_ids[c % len(batch_ids)])
            first = start + c * period / clients
            for k in range(per_client):
                scheduled = first + k * period
                await _sleep_until(loop, scheduled)
                headers = {**auth, "Upload-Length": str(len(payload)),
                           "Upload-Metadata": _metadata(filename=f"c{c}-f{k}.dcm", batch_id=batch)}
                try:
                    if not await send(http, url, headers, payload, tally, loop, scheduled):
                        continue
                except (TimeoutError, aiohttp.ClientError) as exc:
                    tally.fail("file", type(exc).__name__)
                    continue
                tally.ok("file", loop.time() - scheduled)
                files_done[c] += 1

        start = loop.time() + 0.2
        tally.started = start
        await asyncio.gather(*(client(c) for c in range(clients)))
        tally.finished = loop.time()
    files = tally.latencies.pop("file", [])
    shape = ("creation-with-upload: one POST a file" if with_upload
             else "creation + one PATCH a file")
    summary = tally.summary(
        workload=f"tus {clients} clients, one {len(payload)}-byte file each per {period:g} s",
        shape=shape,
        link="as between generator and server (not shaped by the generator)",
        offered_files_per_s=round(clients / period, 1), duration_s=duration,
        files_offered=clients * per_client, files_accepted=sum(files_done.values()))
    summary["files_per_s"] = round(len(files) / summary["wall_seconds"], 1)
    summary["file"] = {"count": len(files), **_percentiles("", files)}
    return summary


async def _send_create_then_patch(http: aiohttp.ClientSession, url: str, headers: dict,
                                  payload: bytes, tally: Tally, loop: asyncio.AbstractEventLoop,
                                  scheduled: float) -> bool:
    """tus creation, then the whole file in one PATCH (tuspy's and tus-js-client's default)."""
    async with http.post(f"{url}/api/v1/files", headers=headers) as resp:
        await resp.read()
        location = resp.headers.get("Location", "")
        if resp.status != 201 or not location:
            tally.fail("POST", str(resp.status))
            return False
    tally.ok("create", loop.time() - scheduled)
    if location.startswith("/"):
        location = url + location
    sent = loop.time()
    auth = {k: headers[k] for k in ("Authorization", "Tus-Resumable")}
    async with http.patch(location, data=payload, headers={
            **auth, "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream"}) as resp:
        await resp.read()
        if resp.status != 204 or resp.headers.get("Upload-Offset") != str(len(payload)):
            tally.fail("PATCH", str(resp.status))
            return False
    tally.ok("patch", loop.time() - sent)
    return True


async def _send_with_upload(http: aiohttp.ClientSession, url: str, headers: dict,
                            payload: bytes, tally: Tally, loop: asyncio.AbstractEventLoop,
                            scheduled: float) -> bool:
    """tus creation-with-upload: the whole file in the creating POST, accepted when the 201
    says the server holds all of it (the web page's and the CLI's way for a small file)."""
    async with http.post(f"{url}/api/v1/files", data=payload, headers={
            **headers, "Content-Type": "application/offset+octet-stream"}) as resp:
        await resp.read()
        if (resp.status != 201 or not resp.headers.get("Location")
                or resp.headers.get("Upload-Offset") != str(len(payload))):
            tally.fail("POST+upload", str(resp.status))
            return False
    tally.ok("create+upload", loop.time() - scheduled)
    return True


# --------------------------------------------------------------------------- CLI


def _payload(path: str | None, size: int) -> bytes:
    if path:
        with open(path, "rb") as fh:
            return fh.read()
    return os.urandom(size)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the gateway's base URL")
    parser.add_argument("--token", action="append", required=True,
                        help="API token (repeat to spread clients over several users)")
    sub = parser.add_subparsers(dest="workload", required=True)
    get = sub.add_parser("get", help="authenticated GET /api/v1/batches/ID at a fixed rate")
    get.add_argument("--batch", type=int, required=True)
    get.add_argument("--rate", type=float, default=1000.0, help="requests/s offered")
    get.add_argument("--duration", type=float, default=20.0)
    get.add_argument("--warmup", type=float, default=2.0)
    get.add_argument("--connections", type=int, default=256)
    tus = sub.add_parser("tus", help="concurrent tus clients with a pause between files")
    tus.add_argument("--batch", type=int, action="append",
                     help="batch id(s) to upload into (default: open one per token)")
    tus.add_argument("--clients", type=int, default=200)
    tus.add_argument("--period", type=float, default=1.0, help="seconds between a client's files")
    tus.add_argument("--size", type=int, default=40_000, help="file size in bytes")
    tus.add_argument("--file", help="upload this file's bytes instead of random ones")
    tus.add_argument("--duration", type=float, default=30.0)
    tus.add_argument("--with-upload", action="store_true",
                     help="one creation-with-upload POST a file instead of creation + PATCH")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")

    async def go() -> dict:
        if args.workload == "get":
            return await run_get(url, args.token, f"/api/v1/batches/{args.batch}", args.rate,
                                 args.duration, args.connections, args.warmup)
        batches = args.batch or [await open_batch(url, t, "loadgen") for t in args.token]
        return await run_tus(url, args.token, batches, args.clients, args.period, args.duration,
                             _payload(args.file, args.size), with_upload=args.with_upload)

    started = time.time()
    result = asyncio.run(go())
    result["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
