"""The DICOM listener's allow-list: entries, their validation, and which entry an association
matches (AE title exact, most specific network first); the ``relaypacs scp-callers`` commands."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from api.cli import main
from pipeline.intake import callers
from pipeline.models import AuditEvent


@pytest.fixture
def allow(session):
    def add(ae_title: str, facility: str, network: str | None = None):
        caller = callers.add_caller(session, ae_title, facility, network)
        session.commit()
        return caller

    return add


def _facility(match) -> str | None:
    return match.facility if isinstance(match, callers.AllowedCaller) else None


def test_an_ae_title_matches_exactly_from_any_address(session, allow):
    allow("CT_ROOM_1", "Clinic North")
    assert _facility(callers.match_caller(session, "CT_ROOM_1", "192.0.2.7")) == "Clinic North"
    # Trailing padding is not significant; case is.
    assert _facility(callers.match_caller(session, "CT_ROOM_1  ", "192.0.2.7")) == "Clinic North"
    assert callers.match_caller(session, "ct_room_1", "192.0.2.7") == callers.UnknownCaller("ae_title")
    assert callers.match_caller(session, "OTHER", "192.0.2.7") == callers.UnknownCaller("ae_title")


def test_networks_limit_an_entry_and_the_most_specific_one_wins(session, allow):
    allow("MODALITY", "Clinic North", network="10.1.0.0/16")
    allow("MODALITY", "Clinic East", network="10.1.2.0/24")
    allow("MODALITY", "Clinic Any")
    allow("MR_ONLY_HERE", "Clinic North", network="10.9.0.0/16")
    match = callers.match_caller
    assert _facility(match(session, "MODALITY", "10.1.2.3")) == "Clinic East"
    assert _facility(match(session, "MODALITY", "10.1.9.9")) == "Clinic North"
    assert _facility(match(session, "MODALITY", "::ffff:10.1.2.3")) == "Clinic East"  # v4-mapped
    assert _facility(match(session, "MODALITY", "172.16.0.1")) == "Clinic Any"
    assert match(session, "MR_ONLY_HERE", "10.8.0.1") == callers.UnknownCaller("network")
    assert match(session, "MR_ONLY_HERE", "not-an-address") == callers.UnknownCaller("network")
    # A listener for one facility knows only that facility's entries.
    assert _facility(match(session, "MODALITY", "10.1.2.3", facility="Clinic North")) == "Clinic North"
    assert match(session, "MR_ONLY_HERE", "10.9.0.1", facility="Clinic East") == \
        callers.UnknownCaller("ae_title")


@pytest.mark.parametrize(("ae_title", "network"), [
    ("", None), ("   ", None), ("SEVENTEEN_CHARS_X", None), ("BACK\\SLASH", None),
    ("TAB\tBED", None), ("CT", "10.0.0.300/8"), ("CT", "somewhere"),
])
def test_bad_entries_are_refused(session, ae_title, network):
    with pytest.raises(callers.CallerSpecError):
        callers.add_caller(session, ae_title, "Clinic North", network)


def test_an_entry_is_added_once_and_removed_by_title_and_network(session, allow):
    allow("CT", "Clinic North")
    allow("CT", "Clinic North", network="10.0.0.1/8")  # normalised to 10.0.0.0/8
    with pytest.raises(callers.CallerSpecError, match="allowed already"):
        allow("CT", "Clinic South", network="10.0.0.0/8")
    assert [(c.ae_title, c.network) for c in callers.list_callers(session)] == [
        ("CT", None), ("CT", "10.0.0.0/8")]
    callers.remove_caller(session, "CT", "10.0.0.0/8")
    assert [c.network for c in callers.list_callers(session)] == [None]
    with pytest.raises(callers.CallerSpecError, match="no entry"):
        callers.remove_caller(session, "CT", "10.0.0.0/8")


def test_the_commands_add_list_and_remove_with_an_audit_row_each(app, settings, session, monkeypatch):
    monkeypatch.setenv("RELAYPACS_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    added = runner.invoke(main, ["scp-callers", "add", "CT_NORTH", "--facility", "Clinic North",
                                 "--network", "10.20.0.0/16"])
    assert added.exit_code == 0, added.output
    assert "CT_NORTH from 10.20.0.0/16 sends for 'Clinic North'" in added.output
    again = runner.invoke(main, ["scp-callers", "add", "CT_NORTH", "--facility", "Clinic North",
                                 "--network", "10.20.0.0/16"])
    assert again.exit_code == 1 and "allowed already" in again.output
    listed = runner.invoke(main, ["scp-callers", "list"])
    assert listed.output.split("\t")[1:] == ["CT_NORTH", "10.20.0.0/16", "Clinic North\n"]
    removed = runner.invoke(main, ["scp-callers", "remove", "CT_NORTH", "--network", "10.20.0.0/16"])
    assert removed.exit_code == 0, removed.output
    assert runner.invoke(main, ["scp-callers", "list"]).output == ""
    session.expire_all()
    rows = session.query(AuditEvent).order_by(AuditEvent.id).all()
    assert [(r.action, r.detail["ae_title"], r.detail["network"]) for r in rows] == [
        ("scp_caller.added", "CT_NORTH", "10.20.0.0/16"),
        ("scp_caller.removed", "CT_NORTH", "10.20.0.0/16")]
