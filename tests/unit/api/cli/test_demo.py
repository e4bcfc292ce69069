"""``relaypacs demo``: the whole pipeline in seconds, then visible on the dashboard.

Each test runs the command in its own process: the demo reconfigures the process-wide Celery
app and worker runtime for its in-memory broker, which must not leak into other tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

from tests.signals import default_sigint

# Bounds for a loaded 2-core CI machine; the demo takes a few seconds on a quiet one (it took
# ~95 s while its worker waited 2 s for every pair of tasks).
DEMO_TIMEOUT = 90


def _demo(tmp_path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RELAYPACS_VAR_DIR": str(tmp_path)}
    for name in ("RELAYPACS_DATABASE_URL", "RELAYPACS_STORAGE_URL", "RELAYPACS_BROKER_URL"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, "-m", "api.cli", "demo", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_sigint)


def test_demo_delivers_everything_and_says_where_the_time_went(tmp_path):
    started = time.perf_counter()
    process = _demo(tmp_path)
    try:
        output, _ = process.communicate(timeout=DEMO_TIMEOUT)
    finally:
        process.kill()  # only a demo that overran is still there
    wall = time.perf_counter() - started
    print(f"relaypacs demo: {wall:.1f} s wall clock\n{output}")
    assert process.returncode == 0, output
    assert "batch 1: done" in output
    assert "deliveries: {'delivered': 28}; 28 instances in destination folder" in output
    for phase in ("tus upload", "assembly + parse", "forwarding", "total"):
        assert phase in output
    # How to look at it afterwards: the demo's database, served, and how to sign in.
    assert f"RELAYPACS_DATABASE_URL=sqlite:///{tmp_path}/demo/" in output
    assert "as admin@demo.clinic with the password:" in output.splitlines()[-2]
    assert re.search(r"^[A-Za-z0-9_\-]{16}$", output.splitlines()[-1])


def test_demo_serve_shows_the_batch_on_the_dashboard(tmp_path):
    process = _demo(tmp_path, "--serve", "--port", "0", "--synthetic", "2")
    lines: list[str] = []
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT
        url = None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, "".join(lines)  # the demo ended instead of serving
            lines.append(line)
            found = re.search(r"serving the demo at (http://\S+)", line)
            url = url or (found and found.group(1))
            if url and len(lines) >= 2 and "with the password:" in lines[-2]:
                break
        password = lines[-1].strip()
        assert url and password, "".join(lines)

        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        body = urllib.parse.urlencode({"email": "admin@demo.clinic", "password": password}).encode()
        page = browser.open(f"{url}/login", data=body, timeout=10).read().decode()
        uploads = re.search(r'id="total-uploads" data-measure="uploads">([\d,]+)<', page)
        delivered = re.search(r'id="total-delivered" data-measure="delivered">([\d,]+)<', page)
        assert uploads and delivered, page
        # 9 shipped samples + 2 synthetic CT slices; the PDF and the truncated file quarantined.
        assert (uploads.group(1), delivered.group(1)) == ("12", "10")
        assert "Demo Clinic" in page
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            process.wait(timeout=20)
        finally:
            process.kill()
    assert process.returncode == 0
