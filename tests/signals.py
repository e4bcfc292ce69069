"""Child processes that a test stops with Ctrl-C (SIGINT) must take it as a person's terminal
would deliver it. A shell that starts a command in the background without job control (CI
runners, `cmd &` in a script) starts it with SIGINT ignored; children inherit that, and Python
then installs no KeyboardInterrupt handler, so the Ctrl-C the test sends would do nothing."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``preexec_fn`` for Popen: the child starts with SIGINT's default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
