"""Who is notified of a comment and what the mails say (and do not say)."""

from pipeline.reports import notices


def test_comment_recipients_once_each_never_the_author():
    assert notices.comment_recipients(1, [2, 3, 2, 1], [4], [5]) == [2, 3]
    # Nobody named: the thread and the senders, the author left out.
    assert notices.comment_recipients(1, [], [1, 4, 2], [2, 5]) == [4, 2, 5]
    assert notices.comment_recipients(1, [], [1], [1]) == []


def test_mail_preferences():
    modes = {2: "each", 3: "daily", 4: "none"}
    assert notices.mail_now([2, 3, 4, 5], modes) == [2, 5]  # 5 never chose: each
    assert notices.in_digest("daily") and not notices.in_digest("each") and not notices.in_digest(None)


def test_mail_names_no_patient_and_carries_an_unsubscribe_link():
    mail = notices.notice_mail("comment", 42, base_url="https://gw.example/", unsubscribe_key="t o")
    assert "https://gw.example/reports/42" in mail.body
    assert "https://gw.example/api/v1/notifications/unsubscribe?token=t%20o" in mail.body
    assert mail.headers["List-Unsubscribe"] == \
        "<https://gw.example/api/v1/notifications/unsubscribe?token=t%20o>"
    assert mail.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail.subject == "New comment on a report"


def test_digest_lists_each_notice():
    mail = notices.digest_mail([("comment", 1), ("report_status", 2)], base_url="https://gw",
                               unsubscribe_key="x")
    assert mail.subject == "RelayPACS: 2 new notification(s)"
    assert "https://gw/reports/1" in mail.body and "https://gw/reports/2" in mail.body
