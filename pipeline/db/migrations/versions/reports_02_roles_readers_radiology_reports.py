"""several roles per user (users.roles, filled from users.role), reader assignments, and
radiology reports with their status history and the report poll's state

Revision ID: reports_02
Revises: reports_01
"""

import sqlalchemy as sa
from alembic import op

revision = "reports_02"
down_revision = "reports_01"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("users", sa.Column("roles", sa.JSON(), nullable=True))
    users = sa.table("users", sa.column("id", sa.Integer()), sa.column("role", sa.String()),
                     sa.column("roles", sa.JSON()))
    bind = op.get_bind()
    # Every existing user keeps exactly the role they had, now as a set of one.
    for user_id, role in bind.execute(sa.select(users.c.id, users.c.role)).all():
        bind.execute(users.update().where(users.c.id == user_id).values(roles=[role]))
    with op.batch_alter_table("users") as batch:
        batch.alter_column("roles", existing_type=sa.JSON(), nullable=False)

    op.create_table(
        "reader_assignments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("facility_id", sa.Integer(), sa.ForeignKey("facilities.id"), nullable=False),
        sa.Column("subspecialties", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
        sa.UniqueConstraint("user_id", "facility_id", name="uq_reader_assignments_user_facility"),
    )
    op.create_index("ix_reader_assignments_user_id", "reader_assignments", ["user_id"])
    op.create_index("ix_reader_assignments_facility_id", "reader_assignments", ["facility_id"])

    op.create_table(
        "radiology_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("facility_id", sa.Integer(), sa.ForeignKey("facilities.id"), nullable=False),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("destination_id", sa.Integer(), sa.ForeignKey("destinations.id"), nullable=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("text_sha256", sa.String(64), nullable=False),
        sa.Column("object_key", sa.String(512), nullable=True),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("author_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("document_author", sa.String(200), nullable=True),
        sa.Column("document_at", TS, nullable=True),
        sa.Column("predecessor_id", sa.Integer(), sa.ForeignKey("radiology_reports.id"), nullable=True),
        sa.Column("superseded_by_id", sa.Integer(), sa.ForeignKey("radiology_reports.id"), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("destination_id", "sop_instance_uid", name="uq_radiology_reports_destination_sop"),
    )
    op.create_index("ix_radiology_reports_study_id", "radiology_reports", ["study_id"])
    op.create_index("ix_radiology_reports_facility_id", "radiology_reports", ["facility_id", "id"])

    op.create_table(
        "report_status_changes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("report_id", sa.Integer(), sa.ForeignKey("radiology_reports.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("by_user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_report_status_changes_report_id", "report_status_changes", ["report_id"])

    op.create_table(
        "report_poll_states",
        sa.Column("destination_id", sa.Integer(), sa.ForeignKey("destinations.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("next_poll_at", TS, nullable=True),
        sa.Column("last_polled_at", TS, nullable=True),
        sa.Column("last_success_at", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("studies_checked", sa.Integer(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "study_report_checks",
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("destination_id", sa.Integer(), sa.ForeignKey("destinations.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("delivered_at", TS, nullable=False),
        sa.Column("last_checked_at", TS, nullable=True),
        sa.Column("next_check_at", TS, nullable=True),
        sa.Column("documents_seen", sa.Integer(), nullable=False),
    )
    op.create_index("ix_study_report_checks_next_check_at", "study_report_checks", ["next_check_at"])


def downgrade() -> None:
    op.drop_index("ix_study_report_checks_next_check_at", table_name="study_report_checks")
    op.drop_table("study_report_checks")
    op.drop_table("report_poll_states")
    op.drop_index("ix_report_status_changes_report_id", table_name="report_status_changes")
    op.drop_table("report_status_changes")
    op.drop_index("ix_radiology_reports_facility_id", table_name="radiology_reports")
    op.drop_index("ix_radiology_reports_study_id", table_name="radiology_reports")
    op.drop_table("radiology_reports")
    op.drop_index("ix_reader_assignments_facility_id", table_name="reader_assignments")
    op.drop_index("ix_reader_assignments_user_id", table_name="reader_assignments")
    op.drop_table("reader_assignments")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("roles")
