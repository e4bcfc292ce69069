"""Round trips per API request on a real PostgreSQL and Redis (the Flask app in-process):
an authenticated read of a batch costs the same number of statements whether it has no
files or 200, and a small file's tus creation and PATCH stay within the statements the
lease and the bookkeeping need. The ceilings are the measured numbers: a change that adds
a round trip to these paths fails here."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import pytest

from pipeline.accounts.users import create_user
from pipeline.models import Batch, Upload, UploadState, utcnow
from tests.integration.request_costs import RequestCosts
from tests.integration.services import app_on_new_database

pytestmark = pytest.mark.integration

FILE = os.urandom(40_000)


@pytest.fixture(scope="module")
def app(redis_url, tmp_path_factory) -> Iterator:  # noqa: ANN001
    with app_on_new_database("relaypacs_costs_", redis_url, tmp_path_factory.mktemp("costs")) as app:
        yield app


@pytest.fixture(scope="module")
def token(app) -> str:  # noqa: ANN001
    with app.extensions["relaypacs"].session_factory() as session:
        _, token = create_user(session, "costs@costs.test", "Costs Clinic", "uploader")
        session.commit()
    return token


def _costs(app) -> RequestCosts:  # noqa: ANN001
    return RequestCosts(app.extensions["relaypacs"].session_factory.kw["bind"],
                        app.extensions["relaypacs.autocommit"])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _open_batch(client, auth: dict) -> int:  # noqa: ANN001
    response = client.post("/api/v1/batches", json={"label": "costs"}, headers=auth)
    assert response.status_code == 201, response.json
    return response.json["id"]


def _measured(app, client, method: str, path: str, **kwargs) -> tuple:  # noqa: ANN001, ANN003
    """The request's response and costs, after the same request once unmeasured (warm)."""
    costs = _costs(app)
    with costs.active():
        response = client.open(path, method=method, **kwargs)
    return response, costs


def _add_files(app, batch_id: int, count: int) -> None:  # noqa: ANN001
    with app.extensions["relaypacs"].session_factory() as session:
        batch = session.get(Batch, batch_id)
        now = utcnow()
        for i in range(count):
            session.add(Upload(id=f"costs{batch_id}x{i}", batch_id=batch_id,
                               facility_id=batch.facility_id, user_id=batch.user_id,
                               filename=f"f{i}.dcm", length=40_000, offset=40_000,
                               state=UploadState.ASSEMBLED, created_at=now, updated_at=now,
                               expires_at=now))
        session.commit()


def test_an_authenticated_batch_read_costs_the_same_with_20_or_200_files(app, token):  # noqa: ANN001
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    empty, some, full = (_open_batch(client, auth) for _ in range(3))
    _add_files(app, some, 20)
    _add_files(app, full, 200)
    client.get(f"/api/v1/batches/{empty}", headers=auth)  # warm: token cache, pool
    measured = {}
    for batch_id, files in ((empty, 0), (some, 20), (full, 200)):
        response, measured[files] = _measured(app, client, "GET", f"/api/v1/batches/{batch_id}",
                                              headers=auth)
        assert response.status_code == 200 and response.json["totals"]["files"] == files
        print(f"\nGET {files}-file batch: {dict(measured[files].counts)}")
    assert measured[200].counts == measured[20].counts
    for costs in measured.values():
        assert costs.sql <= SQL_GET_BATCH, costs.statements
        assert costs.round_trips <= ROUND_TRIPS_GET_BATCH, dict(costs.counts)
        # Authorised from the token cache's snapshot of the user: no ORM User merged into
        # a session for a read that never needs one.
        assert costs.orm_objects == 0, costs.orm_objects


def test_a_small_files_tus_creation_and_patch_stay_within_their_statements(app, token):  # noqa: ANN001
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    batch = _open_batch(client, auth)
    create = {**auth, "Upload-Length": str(len(FILE)),
              "Upload-Metadata": f"filename {_b64('a.dcm')},batch_id {_b64(str(batch))}"}
    patch = {**auth, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    warm = client.post("/api/v1/files", headers=create).headers["Location"]  # warm: each
    client.patch(warm.replace("http://localhost", ""), data=FILE, headers=patch)  # statement's PREPARE
    response, on_create = _measured(app, client, "POST", "/api/v1/files", headers=create)
    assert response.status_code == 201
    location = response.headers["Location"].replace("http://localhost", "")
    response, on_patch = _measured(app, client, "PATCH", location, data=FILE, headers=patch)
    assert response.status_code == 204 and response.headers["Upload-Offset"] == str(len(FILE))
    print(f"\ntus creation: {dict(on_create.counts)} {on_create.statements}"
          f"\ntus PATCH: {dict(on_patch.counts)} {on_patch.statements}")
    assert on_create.sql <= SQL_TUS_CREATE, on_create.statements
    assert on_create.round_trips <= ROUND_TRIPS_TUS_CREATE, dict(on_create.counts)
    assert on_patch.sql <= SQL_TUS_PATCH, on_patch.statements
    assert on_patch.round_trips <= ROUND_TRIPS_TUS_PATCH, dict(on_patch.counts)
    assert on_patch.counts["task"] == 0  # the chain starts from upload.completed (the relay)
    with app.extensions["relaypacs"].session_factory() as session:
        upload = session.get(Upload, location.rsplit("/", 1)[1])
        assert (upload.state, upload.offset, upload.lock_token) == (UploadState.ASSEMBLED, len(FILE), None)


def test_a_small_files_creation_with_upload_is_one_statement(app, token):  # noqa: ANN001
    """The web page's and the CLI's small file: one POST carrying the whole file."""
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    batch = _open_batch(client, auth)
    headers = {**auth, "Upload-Length": str(len(FILE)), "Content-Type": "application/offset+octet-stream",
               "Upload-Metadata": f"filename {_b64('a.dcm')},batch_id {_b64(str(batch))}"}
    client.post("/api/v1/files", headers=headers, data=FILE)  # warm
    response, costs = _measured(app, client, "POST", "/api/v1/files", headers=headers, data=FILE)
    assert response.status_code == 201 and response.headers["Upload-Offset"] == str(len(FILE))
    print(f"\ntus creation-with-upload: {dict(costs.counts)} {costs.statements}")
    assert costs.sql <= SQL_TUS_CREATE_WITH_UPLOAD, costs.statements
    assert costs.round_trips <= ROUND_TRIPS_TUS_CREATE_WITH_UPLOAD, dict(costs.counts)
    assert costs.counts["task"] == 0  # the parse starts from upload.completed (the relay)
    with app.extensions["relaypacs"].session_factory() as session:
        upload = session.get(Upload, response.headers["Location"].rsplit("/", 1)[1])
        assert (upload.state, upload.offset, upload.batch_id) == (UploadState.ASSEMBLED, len(FILE), batch)


# Measured ceilings (the starting commit's figures in brackets): a read of a batch whose
# files have no instances yet (what clients poll while they upload), whatever its size, is one
# prepared statement on an autocommit connection (pipeline.intake.batch_report.batch_status)
# and the rate limiter's one Redis command: 1 statement, 2 round trips (8 statements and 12
# round trips with a ping per checkout, BEGIN and ROLLBACK; 7 and 11 for a batch with no
# files). The connection's first read also PREPAREs (warmed here). The autocommit
# connections have their own pool, so a PATCH after a read no longer pays a SET to put a
# borrowed connection back in transaction mode;
# a tus creation 4 statements, 8 round trips (9); a 40 KB PATCH 3 statements, 10 round trips
# (5 and 17: a ping per checkout, a SELECT before the lease's UPDATE, and a renewal
# transaction of a lease taken a moment before).
SQL_GET_BATCH = 1
ROUND_TRIPS_GET_BATCH = 2
# With the event outbox each tus request also INSERTs its events (upload.initiated; the
# chunk's upload.chunk_received) in its own transaction: one statement more each, and no
# Redis publish on the request any more (the relay thread publishes after the commit, and
# its statements are not the request's: RequestCosts counts them apart). Measured: creation
# 5 statements, 8 round trips; PATCH 4 statements, 9 round trips (10 with a ping after 1 s idle).
# Then (capacity3): on PostgreSQL the creation's upload INSERT, the batch's activity stamp
# (a conditional UPDATE, written about once a second per batch) and the outbox INSERT go as
# one statement (data-modifying CTEs), and the PATCH's offset UPDATE carries the stamp the
# same way. Measured: creation 3 statements, 6 round trips; PATCH 3 statements, 8 round
# trips (9 with a ping after 1 s idle).
# Then (tus6): on PostgreSQL a plain creation is the creation-with-upload's one statement
# without a body (pipeline.intake.uploads.insert_checked_upload: the batch, its facility,
# open, the open-upload limit, the row, the stamp, upload.initiated), and the PATCH of a
# small body (up to intake.SMALL_PATCH_BYTES) one statement after its body is stored, with
# no lease (record_small_chunk: the upload's checks, the offset, completion, the chunk row,
# the stamp, the events), each on an autocommit connection beside the rate limiter's one
# Redis command. Measured: creation 1 statement, 2 round trips; PATCH 1 statement, 2
# round trips. A large or streaming body keeps the lease path (3 statements, 8-9).
SQL_TUS_CREATE = 1
ROUND_TRIPS_TUS_CREATE = 2
SQL_TUS_PATCH = 1
ROUND_TRIPS_TUS_PATCH = 2
# A creation-with-upload (capacity4; 1e5956d: 5 statements, the batch's ORM load, the open
# uploads' count, the batch's claim UPDATE, the upload's and the outbox's INSERTs, 8 round
# trips with BEGIN and COMMIT): on PostgreSQL one statement on an autocommit connection (its
# own transaction) checks the batch, the facility and the open-upload limit and adds the
# upload, the activity stamp and the events; the rate limiter's one Redis command beside it.
SQL_TUS_CREATE_WITH_UPLOAD = 1
ROUND_TRIPS_TUS_CREATE_WITH_UPLOAD = 2
# Task messages are counted too (capacity5): the request that completed a file published its
# chain's first task to the broker after its commit, one more round trip than the figures
# above said (the tests' broker is in-memory, so it went uncounted): creation-with-upload 3,
# the completing PATCH 10. Now the chain starts from the committed upload.completed event,
# which the relay hands to workers.chains.after_events (one intake.start_uploads message per
# relayed batch, not per file), so the request publishes nothing: 2 and 9.


def test_the_one_statement_batch_read_says_what_the_full_read_says(app, token):  # noqa: ANN001
    """Until a batch's files have instances its status comes from one prepared statement
    (pipeline.intake.batch_report.batch_status); it must answer exactly as the ORM report."""
    from pipeline.intake.batch_report import batch_report

    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    batch_id = _open_batch(client, auth)
    _add_files(app, batch_id, 3)
    with app.extensions["relaypacs"].session_factory() as session:
        first, second = session.get(Upload, f"costs{batch_id}x0"), session.get(Upload, f"costs{batch_id}x1")
        first.state, first.offset = UploadState.RECEIVING, 12_345  # one still arriving
        second.state, second.quarantine_reason = UploadState.QUARANTINED, "not_dicom"
        second.updated_at = second.updated_at.replace(microsecond=0)  # isoformat without fraction
        session.commit()
    quiet = app.extensions["relaypacs"].settings.batch_quiet_seconds
    fast = client.get(f"/api/v1/batches/{batch_id}", headers=auth).json
    with app.extensions["relaypacs"].session_factory() as session:
        full = app.json.loads(app.json.dumps(batch_report(session, session.get(Batch, batch_id),
                                                          quiet_seconds=quiet)))
    for report in (fast, full):  # counts down with the clock between the two reads
        report["waiting"].pop("quiet_period_ends_in_seconds")
    assert fast == full
    assert fast["totals"]["files_by_state"] == {"receiving": 1, "quarantined": 1, "assembled": 1}
    assert client.get("/api/v1/batches/987654", headers=auth).status_code == 404


def test_a_batch_id_past_the_column_s_range_is_not_found(app, token):  # noqa: ANN001
    # The prepared statement's parameter is a PostgreSQL integer: an id past its range (the
    # fuzzer sent 224679596677) names no batch, and must say so, not fail the statement.
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    for batch_id in (2**31, 224679596677, 2**63):
        response = client.get(f"/api/v1/batches/{batch_id}", headers=auth)
        assert response.status_code == 404, (batch_id, response.status_code, response.json)
