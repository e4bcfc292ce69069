"""Many concurrent SSE clients on one event loop: raw HTTP/1.1 over asyncio streams, so a
thousand clients cost the test a thousand sockets, not a thousand threads."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection
from dataclasses import dataclass, field


@dataclass
class Client:
    token: str
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    status: int = 0
    events: list[dict] = field(default_factory=list)
    arrival: list[float] = field(default_factory=list)


async def open_client(host: str, port: int, client: Client, last_event_id: str | None = None) -> None:
    client.reader, client.writer = await asyncio.open_connection(host, port)
    extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    client.writer.write(
        (f"GET /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
         f"Authorization: Bearer {client.token}\r\n{extra}\r\n").encode())
    await client.writer.drain()
    head = await client.reader.readuntil(b"\r\n\r\n")
    client.status = int(head.split(b" ", 2)[1])
    if client.status == 200:
        await client.reader.readuntil(b": connected\n\n")  # the stream is registered


async def read_events(client: Client) -> None:
    """Collect events until the connection closes (chunked framing is skipped: lines that
    are not SSE fields are ignored)."""
    current: dict[str, str] = {}
    assert client.reader is not None
    while True:
        line = await client.reader.readline()
        if not line:
            return
        text = line.decode().rstrip("\r\n")
        if text.startswith("data: "):
            current["data"] = text[6:]
        elif text.startswith("id: "):
            current["id"] = text[4:]
        elif text == "" and "data" in current:
            client.events.append({"id": current.get("id"), **json.loads(current["data"])})
            client.arrival.append(time.perf_counter())
            current = {}


async def open_many(host: str, port: int, clients: list[Client], concurrency: int = 100) -> float:
    """Connect every client (``concurrency`` handshakes in flight); returns seconds taken."""
    started = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(client: Client) -> None:
        async with gate:
            await open_client(host, port, client)

    await asyncio.gather(*(one(c) for c in clients))
    return time.perf_counter() - started


def close_all(clients: list[Client]) -> None:
    for client in clients:
        if client.writer is not None:
            client.writer.close()


async def hold_and_fan_out(host: str, port: int, rss_kib, admin_token: str, facility_token: str,  # noqa: ANN001
                           publish, clients: int = 1000, per_facility: int = 5,  # noqa: ANN001
                           timeout: float = 60.0, facility_ids: Collection[int] | None = None) -> dict:
    """Open ``clients`` streams (half admins, half one facility's users), publish
    ``per_facility`` events for that facility and as many for another one, and wait until
    every stream has exactly what it may see. ``publish(own: bool, n: int)`` publishes one
    event (synchronously; it runs on a thread). Returns timings and memory.

    ``facility_ids``: the two facilities published for. An admin sees every facility, so on a
    bus other tests' work still publishes to, an admin's count is of these facilities' events
    only (a facility user's stream is counted whole: another facility's event there is the
    fault)."""

    def admin_count(client: Client) -> int:
        if facility_ids is None:
            return len(client.events)
        return sum(1 for e in client.events if e.get("facility_id") in facility_ids)

    await asyncio.sleep(0.5)
    before = rss_kib()
    admins = [Client(admin_token) for _ in range(clients // 2)]
    locals_ = [Client(facility_token) for _ in range(clients - clients // 2)]
    everyone = admins + locals_
    connect_seconds = await open_many(host, port, everyone)
    assert all(c.status == 200 for c in everyone), {c.status for c in everyone}
    readers = [asyncio.create_task(read_events(c)) for c in everyone]
    await asyncio.sleep(1.0)
    held = rss_kib()
    loop = asyncio.get_running_loop()
    published_at = time.perf_counter()
    for n in range(per_facility):
        await loop.run_in_executor(None, publish, True, n)
        await loop.run_in_executor(None, publish, False, n)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(admin_count(c) >= 2 * per_facility for c in admins) and all(
                len(c.events) >= per_facility for c in locals_):
            break
        await asyncio.sleep(0.05)
    last_arrival = max((c.arrival[-1] for c in everyone if c.arrival), default=published_at)
    result = {
        "clients": len(everyone),
        "connect_seconds": round(connect_seconds, 2),
        "rss_before_kib": before,
        "rss_with_clients_kib": held,
        "kib_per_client": round((held - before) / len(everyone), 1),
        "fan_out_seconds": round(last_arrival - published_at, 3),
        "admin_events": sorted({admin_count(c) for c in admins}),
        "facility_events": sorted({len(c.events) for c in locals_}),
        "facility_saw_other_facility": any(
            e.get("facility_id") != locals_[0].events[0]["facility_id"] for c in locals_ for e in c.events)
        if locals_ and locals_[0].events else None,
    }
    for task in readers:
        task.cancel()
    close_all(everyone)
    await asyncio.gather(*readers, return_exceptions=True)
    return result
