"""An emulated clinic link for benchmarks: the clinic side runs in its own network namespace,
joined to the host by a veth pair whose clinic end is shaped with ``tc ... tbf`` (upstream
bandwidth), and reaches the gateway through a delaying TCP proxy on the host end (round-trip
time). This kernel has no ``netem`` (nor ``fq``/``fq_codel``): delay needs the proxy.

    with ClinicLink(upstream_mbit=20, rtt_ms=80) as link:
        url = link.expose(127.0.0.1, api_port)      # http://10.x.y.1:PORT, via the delay proxy
        subprocess.run(link.inside(["relaypacs", "upload", ...,"--server", url]))
        link.upstream_bytes()                        # bytes the shaped interface sent

``inside(argv)`` prefixes ``ip netns exec NS``: any program (the CLI, a headless Chromium)
runs on the clinic side. ``local_url(url)`` gives the clinic side a loopback address for an
exposed URL (a plain forwarder inside the namespace): a browser treats ``http://127.0.0.1``
as a secure context (Web Crypto, the sign-in cookie) and ``http://10.x.y.1`` not.
Needs root (ip netns, tc). The namespace (and with it the veth pair) is deleted on exit, on
failure too, and namespaces left by a killed earlier run (their name carries the creating
process id) are removed at the next start.

What the proxy emulates and what it does not: every byte is held ``rtt/2`` before it is
passed on, in each direction, so each HTTP request/response exchange costs the full round
trip, as on the real link. TCP itself runs on the two short legs (client to proxy, proxy to
server), so its window growth does not see the 80 ms; at 20 Mbit/s x 80 ms the
bandwidth-delay product is 200 KB, which Linux's default buffer autotuning covers, so this
is a small difference for a single stream and none for several.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

NS_PREFIX = "rplink-"
READ_BLOCK = 64 * 1024


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces of this module whose creating process is gone (a killed run)."""
    removed = []
    listing = _run("ip", "netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{NS_PREFIX}(\d+)-[0-9a-f]+", name)
        if match and not os.path.exists(f"/proc/{match[1]}"):
            _run("ip", "netns", "delete", name, check=False)
            removed.append(name)
    return removed


@dataclass
class DirectionCount:
    bytes: int = 0


@dataclass
class DelayProxy:
    """A TCP proxy that holds every byte ``delay`` seconds in each direction (a delay line:
    throughput is not limited, only latency added). Runs its own asyncio loop in a thread."""

    listen_host: str
    target_host: str
    target_port: int
    delay: float
    listen_port: int = 0
    upstream: DirectionCount = field(default_factory=DirectionCount)    # client -> server
    downstream: DirectionCount = field(default_factory=DirectionCount)  # server -> client
    connections: int = 0

    def start(self) -> DelayProxy:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, self.listen_host, self.listen_port)
            self.listen_port = self._server.sockets[0].getsockname()[1]
            ready.set()

        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop)
        if not ready.wait(10):
            raise RuntimeError("delay proxy did not start")
        return self

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.close()
            return
        with contextlib.suppress(asyncio.CancelledError):  # the proxy stopping
            await asyncio.gather(
                self._pipe(client_reader, server_writer, self.upstream),
                self._pipe(server_reader, client_writer, self.downstream),
                return_exceptions=True,
            )
        for writer in (client_writer, server_writer):
            with contextlib.suppress(Exception):
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    count: DirectionCount) -> None:
        loop = asyncio.get_running_loop()
        # Bounded: a slow receiver pushes back on the sender instead of filling memory.
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=1024)

        async def receive() -> None:
            while True:
                try:
                    data = await reader.read(READ_BLOCK)
                except (ConnectionError, OSError):
                    data = b""
                await line.put((loop.time() + self.delay, data))
                if not data:
                    return

        async def deliver() -> None:
            while True:
                due, data = await line.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(Exception):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                writer.write(data)
                count.bytes += len(data)
                await writer.drain()

        receiving = asyncio.ensure_future(receive())
        try:
            await deliver()
        finally:
            receiving.cancel()


class ClinicLink:
    """The namespace, the shaped veth pair and the delay proxies; a context manager."""

    def __init__(self, upstream_mbit: float = 20.0, rtt_ms: float = 80.0,
                 downstream_mbit: float | None = None, burst_bytes: int = 128 * 1024) -> None:
        self.upstream_mbit = upstream_mbit
        self.downstream_mbit = downstream_mbit
        self.rtt_ms = rtt_ms
        self.burst_bytes = burst_bytes
        tag = secrets.token_hex(3)
        self.namespace = f"{NS_PREFIX}{os.getpid()}-{tag}"
        self.host_if, self.clinic_if = f"rpl{tag}h", f"rpl{tag}c"
        octet = int(tag[:2], 16)
        self.host_ip, self.clinic_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
        self.proxies: list[DelayProxy] = []
        self.forwarders: list[subprocess.Popen] = []

    def __enter__(self) -> ClinicLink:
        remove_stale_namespaces()
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tbf(self, device: str, mbit: float, netns: bool) -> None:
        prefix = ["ip", "netns", "exec", self.namespace] if netns else []
        _run(*prefix, "tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate", f"{mbit}mbit",
             "burst", str(self.burst_bytes), "latency", "200ms")

    def _create(self) -> None:
        ns = self.namespace
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.clinic_if)
        _run("ip", "link", "set", self.clinic_if, "netns", ns)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.clinic_ip}/30", "dev", self.clinic_if)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", self.clinic_if, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        # Upstream (clinic -> gateway) is the clinic end's egress; downstream the host end's.
        self._tbf(self.clinic_if, self.upstream_mbit, netns=True)
        if self.downstream_mbit:
            self._tbf(self.host_if, self.downstream_mbit, netns=False)

    def expose(self, target_host: str, target_port: int, scheme: str = "http") -> str:
        """A delay proxy on the host end of the link to ``target``; the URL the clinic side uses."""
        proxy = DelayProxy(self.host_ip, target_host, target_port, self.rtt_ms / 2000.0).start()
        self.proxies.append(proxy)
        return f"{scheme}://{self.host_ip}:{proxy.listen_port}"

    def local_url(self, url: str) -> str:
        """``url`` (from ``expose``) reached from ``http://127.0.0.1:PORT`` on the clinic side:
        a forwarder without delay runs inside the namespace (its bytes still cross the shaped
        veth and the delay proxy). Stopped by ``close``."""
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        local_port = 18000 + secrets.randbelow(2000)
        forwarder = subprocess.Popen(
            self.inside([sys.executable, "-m", "tests.bench.clinic_link", "forward",
                         str(local_port), host, port]),
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
        if forwarder.stdout.readline().strip() != "ready":
            forwarder.kill()
            raise RuntimeError("forwarder inside the clinic namespace did not start")
        self.forwarders.append(forwarder)
        return f"http://127.0.0.1:{local_port}"

    def inside(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run on the clinic side of the link."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def upstream_bytes(self) -> int:
        """Bytes (IP packets, headers included) the shaped clinic end has sent so far."""
        out = _run("ip", "netns", "exec", self.namespace, "tc", "-s", "-j", "qdisc", "show",
                   "dev", self.clinic_if).stdout
        return sum(int(q.get("bytes", 0)) for q in json.loads(out) if q.get("kind") == "tbf")

    def upstream_drops(self) -> int:
        out = _run("ip", "netns", "exec", self.namespace, "tc", "-s", "-j", "qdisc", "show",
                   "dev", self.clinic_if).stdout
        return sum(int(q.get("drops", 0)) for q in json.loads(out) if q.get("kind") == "tbf")

    def close(self) -> None:
        for forwarder in self.forwarders:
            forwarder.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                forwarder.wait(5)
        self.forwarders.clear()
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.stop()
        self.proxies.clear()
        # Deleting the namespace deletes the veth pair with it (both ends).
        _run("ip", "netns", "delete", self.namespace, check=False)
        _run("ip", "link", "delete", self.host_if, check=False)


def _forward(listen_port: int, target_host: str, target_port: int) -> None:
    """``python -m tests.bench.clinic_link forward PORT HOST PORT``: a forwarder without delay
    on 127.0.0.1:PORT (run inside the namespace by ``ClinicLink.local_url``)."""
    proxy = DelayProxy("127.0.0.1", target_host, target_port, 0.0, listen_port=listen_port).start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        proxy.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["forward"]:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        _forward(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
