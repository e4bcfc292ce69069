"""A test's stand-in for ``workers.chains.start_uploads``: the chains that an upload's relayed
``upload.completed`` would start, recorded instead of enqueued (unit and integration tests)."""

from __future__ import annotations


def record_started_uploads(monkeypatch, app, calls: list) -> None:  # noqa: ANN001
    """Append ("parse" | "upload", upload id) to ``calls`` for each upload the app's relay
    hands to chains.start_uploads, at the step intake.start_uploads would enqueue it."""
    from pipeline.intake import uploads
    from workers import chains

    def start_uploads(completed: dict[str, str | None]) -> None:
        with app.extensions["relaypacs"].session_factory() as session:
            steps = uploads.next_steps(session, list(completed))
        calls.extend(("parse" if step == uploads.PARSE else "upload", uid) for step, uid in steps)

    monkeypatch.setattr(chains, "start_uploads", start_uploads)
