"""The gateway behind a real nginx (Debian's), running deploy/nginx.conf (the settings
README recommends) with only its upstreams, ports and paths replaced, in front of gunicorn
(RELAYPACS_TRUSTED_PROXIES=1) and ``relaypacs events``; TLS terminated in nginx with a
self-signed certificate. Through it: a tus upload with tuspy in chunks larger than nginx's
default body limit, an SSE event that arrives at once (not buffered), the session cookie
(Secure over https only, the real client address in the audit trail), the sign-in limit per
real client address (clients on 127.0.0.2 and 127.0.0.3), and slow headers cut by nginx."""

from __future__ import annotations

import http.client
import io
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import redis
import requests

from tests.integration.analytics_services import EventsServer, SseReader
from tests.integration.gateway_client import Gateway
from tests.integration.services import (
    LOOPBACK,
    ApiServer,
    ServiceProcess,
    free_port,
    port_open,
    wait_until,
)
from tests.integration.sign_in_client import make_person
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FACILITY = "Proxy Clinic"
LOGIN_LIMIT = 3


class Nginx(ServiceProcess):
    """deploy/nginx.conf under ``nginx -c CONF -p PREFIX`` in the foreground."""

    def __init__(self, workdir: Path, api_port: int, events_port: int, log_path: Path):
        self.port, self.tls_port = free_port(), free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.tls_url = f"https://{LOOPBACK}:{self.tls_port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert, key = workdir / "cert.pem", workdir / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", f"/CN={LOOPBACK}", "-addext", f"subjectAltName=IP:{LOOPBACK}",
                        "-keyout", str(key), "-out", str(self.cert)], check=True, capture_output=True)
        conf = (ROOT / "deploy" / "nginx.conf").read_text()
        replacements = {
            "pid /run/nginx.pid;": f"pid {workdir / 'nginx.pid'};\ndaemon off;",
            "server api:8000;": f"server {LOOPBACK}:{api_port};",
            "server events:8001;": f"server {LOOPBACK}:{events_port};",
            "listen 80;": (f"listen {LOOPBACK}:{self.port};\n        listen {LOOPBACK}:{self.tls_port} ssl;\n"
                           f"        ssl_certificate {self.cert};\n        ssl_certificate_key {key};"),
            "access_log /dev/stdout;": (
                f"access_log {workdir / 'access.log'};\n"
                + "".join(f"    {kind}_temp_path {workdir / kind};\n"
                          for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))),
        }
        for old, new in replacements.items():
            assert conf.count(old) == 1, f"deploy/nginx.conf no longer has {old!r}"
            conf = conf.replace(old, new)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(conf)
        binary = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
        assert binary, "nginx is not installed (run `bash .ci/setup.sh`)"
        super().__init__("nginx", [binary, "-c", str(self.conf), "-p", str(workdir)], {}, log_path)

    def start(self, timeout: float = 30.0) -> Nginx:  # type: ignore[override]
        super().start()
        self.wait_ready(lambda: port_open(self.port) and port_open(self.tls_port), timeout)
        return self


@pytest.fixture(scope="module")
def stack(gateway_env, it_dir):
    # Rate-limit windows live in the session's Redis, shared with every API process of the
    # session: an earlier test's sign-ins or reset requests from 127.0.0.1 in the same minute
    # would count against this one's budget.
    limits = redis.Redis.from_url(gateway_env["RELAYPACS_REDIS_URL"])
    stale = list(limits.scan_iter("relaypacs:rate:*"))
    if stale:
        limits.delete(*stale)
    api = ApiServer(gateway_env, it_dir / "logs" / "api-nginx.log")
    # Load shedding reads nginx's X-Request-Start: on a busy 2-core CI machine a request can
    # wait over the production 1 s for a thread; this file tests the proxy, not the shedding
    # (tests/unit/api/http/test_shedding.py does), so its bound is wide here.
    api.env.update({"RELAYPACS_TRUSTED_PROXIES": "1", "RELAYPACS_RATE_LIMITS": f"login={LOGIN_LIMIT}",
                    "RELAYPACS_SHED_QUEUE_MS": "15000"})
    events = EventsServer(gateway_env, it_dir / "logs" / "events-nginx.log")
    api.start()
    events.start()
    proxy = Nginx(it_dir / "nginx", api.port, events.port, it_dir / "logs" / "nginx.log").start()
    try:
        yield proxy, api
    finally:
        proxy.stop(grace=5)
        events.stop(grace=5)
        api.stop(grace=5)


def from_address(source: str, url: str, method: str, path: str, body: str = "",
                 headers: dict | None = None) -> http.client.HTTPResponse:
    """A request from another loopback address: another client, as nginx sees it."""
    host, _, port = url.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_tus_upload_with_tuspy_through_nginx(stack, gateway_env):
    from tusclient import client as tus_client

    proxy, _ = stack
    _, _, token = make_person(gateway_env, FACILITY, "uploader")
    gateway = Gateway(proxy.url, token)
    batch_id = gateway.open_batch(label="through nginx")
    data = synthetic_study(1)[0]
    data += b"\0" * (3 * 1024 * 1024 - len(data))  # 3 MiB: chunks above nginx's default 1 MiB body limit
    tus = tus_client.TusClient(f"{proxy.url}/api/v1/files", headers={"Authorization": f"Bearer {token}"})
    uploader = tus.uploader(file_stream=io.BytesIO(data), chunk_size=1536 * 1024,
                            metadata={"filename": "big.dcm", "batch_id": str(batch_id)})
    uploader.upload()
    assert uploader.url.startswith(f"{proxy.url}/api/v1/files/")  # Location points back through nginx
    head = gateway.head(uploader.url)
    assert head.status_code == 200 and int(head.headers["Upload-Offset"]) == len(data)
    files = gateway.report(batch_id)["files"]
    assert [(f["filename"], f["offset"], f["length"]) for f in files] == [("big.dcm", len(data), len(data))]


def test_an_event_arrives_through_nginx_at_once(stack, gateway_env):
    proxy, _ = stack
    _, _, token = make_person(gateway_env, FACILITY, "uploader")
    reader = SseReader(proxy.url, token)
    try:
        assert reader.status == 200
        gateway = Gateway(proxy.url, token)
        batch_id = gateway.open_batch(label="sse through nginx")
        sent = time.monotonic()
        created = gateway.create(batch_id, 1000, "one.dcm")
        assert created.status_code == 201
        reader.wait_for(lambda e: e["type"] == "upload.initiated" and e.get("batch_id") == batch_id,
                        "upload.initiated through nginx", timeout=10)
        latency = time.monotonic() - sent
        print(f"SSE event through nginx {latency * 1000:.0f} ms after the request")
        assert latency < 1.5  # buffered, it would wait for the next keepalive (15 s) or more
    finally:
        reader.close()


def test_session_cookie_behind_nginx_is_secure_over_https_and_names_the_client(stack, gateway_env):
    proxy, api = stack
    email, password, admin_token = make_person(gateway_env, FACILITY, "admin")
    # Over TLS: Secure, and the cookie works for the pages and the API through nginx.
    browser = requests.Session()
    ca = str(proxy.cert)  # per request: REQUESTS_CA_BUNDLE in the environment beats Session.verify
    signed = browser.post(f"{proxy.tls_url}/login", data={"email": email, "password": password},
                          allow_redirects=False, timeout=10, verify=ca)
    assert signed.status_code == 302
    cookie = signed.headers["Set-Cookie"]
    assert re.search(r";\s*Secure", cookie) and "HttpOnly" in cookie and "Path=/" in cookie
    assert browser.get(f"{proxy.tls_url}/dashboard", timeout=10, verify=ca).status_code == 200
    assert browser.get(f"{proxy.tls_url}/api/v1/batches", timeout=10, verify=ca).status_code == 200
    # Plain http through the same proxy: not Secure (else the browser would drop it).
    plain = requests.post(f"{proxy.url}/login", data={"email": email, "password": password},
                          allow_redirects=False, timeout=10)
    assert plain.status_code == 302 and not re.search(r";\s*Secure", plain.headers["Set-Cookie"])
    # The audit trail names the real client (127.0.0.4), not nginx.
    from_address("127.0.0.4", proxy.url, "POST", "/login", f"email={email}&password=wrong-password",
                 {"Content-Type": "application/x-www-form-urlencoded"})
    trail = requests.get(f"{api.url}/api/v1/audit?action=auth.login_refused&limit=5",
                         headers={"Authorization": f"Bearer {admin_token}"}, timeout=10).json()["events"]
    assert trail[0]["remote_addr"] == "127.0.0.4"
    # A forged X-Forwarded-For from the client is not believed: nginx appends the real one.
    from_address("127.0.0.4", proxy.url, "POST", "/login", f"email={email}&password=wrong-password",
                 {"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": "10.1.2.3"})
    trail = requests.get(f"{api.url}/api/v1/audit?action=auth.login_refused&limit=1",
                         headers={"Authorization": f"Bearer {admin_token}"}, timeout=10).json()["events"]
    assert trail[0]["remote_addr"] == "127.0.0.4"


def test_sign_in_limit_per_real_client_address_behind_nginx(stack, gateway_env):
    proxy, _ = stack
    email, _, _ = make_person(gateway_env, FACILITY, "qa_manager")
    if time.time() % 60 > 50:  # fixed one-minute windows: do not straddle one
        time.sleep(61 - time.time() % 60)
    form = f"email={email}&password=not-the-password"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    first = [from_address("127.0.0.2", proxy.url, "POST", "/login", form, headers).status
             for _ in range(LOGIN_LIMIT + 1)]
    assert first == [401] * LOGIN_LIMIT + [429]
    # Another client behind the same nginx keeps its own budget.
    assert from_address("127.0.0.3", proxy.url, "POST", "/login", form, headers).status == 401


def test_nginx_cuts_slow_headers(stack):
    proxy, _ = stack
    slow = socket.create_connection((LOOPBACK, proxy.port), timeout=30)
    started = time.monotonic()
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
    try:
        answer = slow.recv(4096)  # nginx closes (or answers 408) after client_header_timeout
    except OSError:
        answer = b""
    elapsed = time.monotonic() - started
    slow.close()
    print(f"slow headers cut after {elapsed:.1f} s")
    assert 8 < elapsed < 15 and (answer == b"" or b"408" in answer)
    wait_until(lambda: requests.get(f"{proxy.url}/healthz", timeout=5).status_code == 200, "proxy serves", 10)


def test_tls_certificate_is_the_tests_own(stack):
    proxy, _ = stack
    context = ssl.create_default_context(cafile=str(proxy.cert))
    with socket.create_connection((LOOPBACK, proxy.tls_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=LOOPBACK) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
