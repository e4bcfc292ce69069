"""teaching file: cases, de-identified instances, the admin-only identity mapping; on
PostgreSQL a generated tsvector over the case's words with a GIN index

Revision ID: teaching_01
Revises: reports_02 (safety_recovery_01 before branch reports was merged in)
"""

import sqlalchemy as sa
from alembic import op

revision = "teaching_01"
down_revision = "events_01"
branch_labels = None
depends_on = None

# Weighted: the title and diagnosis count most, then findings and keywords, then the rest.
SEARCH_VECTOR = (
    "setweight(to_tsvector('english', coalesce(title, '') || ' ' || coalesce(diagnosis, '')), 'A')"
    " || setweight(to_tsvector('english', coalesce(findings, '') || ' ' || coalesce(keywords_text, '')"
    " || ' ' || coalesce(modality, '') || ' ' || coalesce(body_part, '')), 'B')"
    " || setweight(to_tsvector('english', coalesce(history, '') || ' ' || coalesce(differential, '')"
    " || ' ' || coalesce(discussion, '')), 'C')"
)


def upgrade() -> None:
    op.create_table(
        "teaching_cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("history", sa.Text(), nullable=False),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("diagnosis", sa.String(length=300), nullable=False),
        sa.Column("differential", sa.Text(), nullable=False),
        sa.Column("discussion", sa.Text(), nullable=False),
        sa.Column("difficulty", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=False),
        sa.Column("keywords", sa.JSON(), nullable=False),
        sa.Column("keywords_text", sa.Text(), nullable=False, server_default=""),
        sa.Column("author_id", sa.Integer(), nullable=False),
        sa.Column("author_facility_id", sa.Integer(), nullable=False),
        sa.Column("show_author_facility", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("preparation", sa.String(length=24), nullable=False),
        sa.Column("preparation_note", sa.Text(), nullable=True),
        sa.Column("key_image_key", sa.String(length=512), nullable=True),
        sa.Column("key_instance_id", sa.BigInteger(), nullable=True),
        sa.Column("package_key", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["author_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["author_facility_id"], ["facilities.id"]),
        sa.ForeignKeyConstraint(["published_by"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_teaching_cases_author_id", "teaching_cases", ["author_id"])
    op.create_index("ix_teaching_cases_state", "teaching_cases", ["state"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE teaching_cases ADD COLUMN search_vector tsvector "
            f"GENERATED ALWAYS AS ({SEARCH_VECTOR}) STORED"
        )
        op.execute(
            "CREATE INDEX ix_teaching_cases_search ON teaching_cases USING gin (search_vector)"
        )
    op.create_table(
        "teaching_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("object_key", sa.String(length=512), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("hold_reason", sa.String(length=200), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["teaching_cases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_id", "sop_instance_uid"),
    )
    op.create_index("ix_teaching_instances_case", "teaching_instances", ["case_id", "state"])
    op.create_table(
        "teaching_case_sources",
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("facility_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.BigInteger(), nullable=True),
        sa.Column("shift_days", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["teaching_cases.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["facility_id"], ["facilities.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.PrimaryKeyConstraint("case_id"),
    )
    op.create_table(
        "teaching_identity_map",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("source_instance_id", sa.Integer(), nullable=False),
        sa.Column("teaching_instance_id", sa.Integer(), nullable=False),
        sa.Column("original_patient_id", sa.String(length=64), nullable=False),
        sa.Column("original_accession", sa.String(length=64), nullable=False),
        sa.Column("original_study_uid", sa.String(length=64), nullable=False),
        sa.Column("original_series_uid", sa.String(length=64), nullable=False),
        sa.Column("original_sop_uid", sa.String(length=64), nullable=False),
        sa.Column("new_sop_uid", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["teaching_cases.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["source_instance_id"], ["instances.id"]),
        sa.ForeignKeyConstraint(
            ["teaching_instance_id"], ["teaching_instances.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_id", "source_instance_id"),
    )


def downgrade() -> None:
    op.drop_table("teaching_identity_map")
    op.drop_table("teaching_case_sources")
    op.drop_index("ix_teaching_instances_case", table_name="teaching_instances")
    op.drop_table("teaching_instances")
    op.drop_index("ix_teaching_cases_state", table_name="teaching_cases")
    op.drop_index("ix_teaching_cases_author_id", table_name="teaching_cases")
    op.drop_table("teaching_cases")
