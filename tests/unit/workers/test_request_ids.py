"""The id of the request that completed an upload follows its chain, although the chain is
started by whichever process relays the upload.completed event (workers.chains.after_events)."""

from config.logging import request_id
from pipeline.intake import uploads
from pipeline.models import Upload, UploadState
from pipeline.ops import events
from pipeline.ops.outbox import Outgoing
from workers import chains, intake


def _upload(state: UploadState) -> Upload:
    return Upload(id="u1", facility_id=3, batch_id=7, user_id=2, offset=10, length=10, state=state.value)


def test_upload_completed_carries_the_request_that_completed_it():
    from api.events import publish

    token = request_id.set("req-abc")
    try:
        out = publish._chunk_events(_upload(UploadState.RECEIVED))
    finally:
        request_id.reset(token)
    completed = [e for e in out if e.type == events.UPLOAD_COMPLETED]
    assert completed and completed[0].data["request_id"] == "req-abc"
    # Outside a request (no id), the event says nothing of one.
    assert "request_id" not in publish._chunk_events(_upload(UploadState.RECEIVED))[-1].data


def test_the_relays_follow_up_hands_each_uploads_request_id_to_its_start(monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(chains, "start_uploads", lambda uploads: seen.update(uploads))
    chains.after_events([
        Outgoing("1", events.UPLOAD_COMPLETED, 3, "{}", {"upload_id": "u1", "request_id": "r1"}),
        Outgoing("2", events.UPLOAD_INITIATED, 3, "{}", {"upload_id": "u3", "request_id": "r3"}),
        Outgoing("3", events.UPLOAD_COMPLETED, 3, "{}", {"upload_id": "u2"}),
    ])
    assert list(seen.items()) == [("u1", "r1"), ("u2", None)]


def test_each_chain_is_enqueued_under_its_own_requests_id(monkeypatch):
    # The publish signal (workers.app._carry_request_id) copies the current id into the message.
    enqueued: list[tuple[str, str, str | None]] = []
    monkeypatch.setattr(intake.runtime, "session_scope", _no_session)
    steps = [(uploads.PARSE, "u1"), (uploads.ASSEMBLE, "u2"), (uploads.PARSE, "u3")]
    monkeypatch.setattr(intake.intake, "next_steps", lambda _s, ids: steps)
    monkeypatch.setattr(chains, "enqueue_parse",
                        lambda uid: enqueued.append(("parse", uid, request_id.get())))
    monkeypatch.setattr(chains, "enqueue_upload_chain",
                        lambda uid: enqueued.append(("upload", uid, request_id.get())))
    token = request_id.set("the-start-task")
    try:
        intake.start_uploads.run({"u1": "r1", "u2": "r2", "u3": None})
        assert request_id.get() == "the-start-task"
    finally:
        request_id.reset(token)
    assert enqueued == [("parse", "u1", "r1"), ("upload", "u2", "r2"), ("parse", "u3", "the-start-task")]


class _no_session:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None
