"""storage lifecycle (issue 6): catalogue of kept objects, restore requests, storage runs

Revision ID: lifecycle_01
Revises: forecasts_01
"""

from alembic import op
import sqlalchemy as sa


revision = "lifecycle_01"
down_revision = "forecasts_01"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("facility_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("object_key", sa.String(length=512), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("storage_class", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tiered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("moving_to", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("bundle_id", sa.Integer(), nullable=True),
        sa.Column("bundle_offset", sa.BigInteger(), nullable=True),
        sa.Column("restored_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rehydrated_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dr_state", sa.String(length=16), nullable=False),
        sa.Column("dr_attempts", sa.Integer(), nullable=False),
        sa.Column("dr_next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dr_copied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dr_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["bundle_id"], ["stored_objects.id"]),
        sa.ForeignKeyConstraint(["facility_id"], ["facilities.id"]),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("object_key"),
    )
    with op.batch_alter_table("stored_objects", schema=None) as batch_op:
        batch_op.create_index("ix_stored_objects_bundle_id", ["bundle_id"], unique=False)
        batch_op.create_index("ix_stored_objects_facility_id", ["facility_id"], unique=False)
        batch_op.create_index("ix_stored_objects_instance_id", ["instance_id"], unique=False)
        batch_op.create_index("ix_stored_objects_study_id", ["study_id"], unique=False)
        batch_op.create_index("ix_stored_objects_tiering", ["state", "storage_class", "stored_at"], unique=False)
        batch_op.create_index("ix_stored_objects_dr", ["dr_state", "dr_next_attempt_at"], unique=False)

    op.create_table(
        "restore_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("facility_id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("stored_object_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("restore_tier", sa.String(length=16), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expected_ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["facility_id"], ["facilities.id"]),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"]),
        sa.ForeignKeyConstraint(["requested_by"], ["users.id"]),
        sa.ForeignKeyConstraint(["stored_object_id"], ["stored_objects.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("restore_requests", schema=None) as batch_op:
        batch_op.create_index("ix_restore_requests_facility_id", ["facility_id"], unique=False)
        batch_op.create_index("ix_restore_requests_state", ["state"], unique=False)
        batch_op.create_index("ix_restore_requests_stored_object_id", ["stored_object_id"], unique=False)

    op.create_table(
        "storage_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("clock", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("storage_runs", schema=None) as batch_op:
        batch_op.create_index("ix_storage_runs_job_started", ["job", "started_at"], unique=False)


def downgrade() -> None:
    op.drop_table("storage_runs")
    op.drop_table("restore_requests")
    op.drop_table("stored_objects")
