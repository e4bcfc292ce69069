"""``relaypacs upload --override FILE``: CSV or JSON per-patient values, shape checked."""

from __future__ import annotations

import pytest

from pipeline.intake.client.folder_upload import OverrideFileError, load_overrides, waiting_line


def test_csv_with_patient_id_and_keyword_columns(tmp_path):
    path = tmp_path / "fix.csv"
    path.write_text("PatientID,PatientName,PatientBirthDate\n"
                    "P1,Doe^Jane,19800101\n"
                    "P2,Roe^Ann,\n", encoding="utf-8")
    assert load_overrides(path) == {
        "P1": {"PatientName": "Doe^Jane", "PatientBirthDate": "19800101"},
        "P2": {"PatientName": "Roe^Ann"},  # an empty cell changes nothing
    }


def test_json_mapping(tmp_path):
    path = tmp_path / "fix.json"
    path.write_text('{"P1": {"PatientName": "Müller^Jürgen"}}', encoding="utf-8")
    assert load_overrides(path) == {"P1": {"PatientName": "Müller^Jürgen"}}


@pytest.mark.parametrize("name, text", [
    ("a.csv", "PatientName\nDoe^Jane\n"),
    ("a.csv", "PatientID,PatientName\n,Doe^Jane\n"),
    ("a.csv", "PatientID,PatientName\nP1,A^B,extra\n"),
    ("a.csv", "PatientID,PatientName\nP1,A^B\nP1,C^D\n"),
    ("a.json", '["P1"]'),
    ("a.json", '{"P1": "Doe^Jane"}'),
    ("a.json", "{not json"),
])
def test_malformed_files(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(OverrideFileError):
        load_overrides(path)


def test_the_waiting_line_says_what_the_batch_waits_for():
    report = {"state": "completed", "waiting": {
        "files_receiving": 1, "files_processing": 2, "conflicts_open": 1,
        "unfinished_files": [
            {"filename": "a.dcm", "state": "receiving", "offset": 40, "length": 100},
            {"filename": "b.dcm", "state": "assembled", "offset": 10, "length": 10},
            {"filename": "c.dcm", "state": "received", "offset": 10, "length": 10},
        ],
        "quiet_period_ends_in_seconds": 100.2, "deliveries_pending": 3}}
    assert waiting_line(report) == ("waiting: 1 file unfinished (a.dcm at 40%), 2 files parsing, "
                                    "1 conflict to resolve, quiet period ends in 1m40s, "
                                    "3 deliveries pending")
    assert waiting_line({"state": "forwarding", "waiting": {"deliveries_pending": 1}}) == (
        "waiting: 1 delivery pending")
    assert waiting_line({"state": "completed", "waiting": {"deliveries_pending": 0}}) == (
        "waiting: forwarding to start")
    assert waiting_line({"state": "done", "waiting": {"deliveries_pending": 0}}) is None
    assert waiting_line({"state": "forwarding"}) is None  # a server without the field


def test_idempotent_calls_survive_a_keep_alive_connection_the_server_just_closed():
    """Over a link with latency, a server's close of an idle keep-alive connection can cross
    the next request on the wire ("Remote end closed connection without response"); the
    CLI's completion (run after minutes of uploading) died of it over the emulated link."""
    import socket
    import threading

    from pipeline.intake.client.folder_upload import GatewayClient

    listener = socket.create_server(("127.0.0.1", 0))
    answered = []

    def serve() -> None:
        # Each connection answers one request, then drops the next one unanswered.
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                body = b'{"id": 7, "state": "completed"}'
                # Counted before the answer goes out: once the client has read the third
                # answer, the count is 3 (counted after sendall, the client could get there
                # first: a full CI run saw 2).
                answered.append(1)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Connection: keep-alive\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                conn.recv(65536)  # the next request on the kept-alive connection: closed on it

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = GatewayClient(f"http://127.0.0.1:{listener.getsockname()[1]}", "token")
    try:
        assert client.batch(7)["id"] == 7
        assert client.complete(7)["state"] == "completed"
        assert client.batch(7)["id"] == 7
    finally:
        listener.close()
    assert len(answered) == 3
