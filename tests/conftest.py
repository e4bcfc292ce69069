"""Defaults for the pytest process itself, set before any test module is imported.

``workers.app`` configures its Celery app from the environment when first imported, and
bench or integration modules may import it before ``tests/unit`` is collected. Without
these defaults that app would point at the embedded broker under a relative ``./var`` that
a fresh clone does not have, and an API route enqueueing in-process would fail. Servers the
tests start (workers, APIs) get their own explicit environment and are not affected.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("RELAYPACS_BROKER_URL", "memory://")
os.environ.setdefault("RELAYPACS_VAR_DIR", tempfile.mkdtemp(prefix="relaypacs-tests-"))
