"""the QA managers' scheduled report builder becomes "exports": tables, column, constraints
and indexes renamed in place (rows kept), so that "report" means a radiology report only

report_definitions -> export_definitions, report_runs -> export_runs,
export_runs.report_id -> export_id, and every index, key and sequence named after them.

Revision ID: reports_01
Revises: safety_recovery_01
"""

from alembic import op

revision = "reports_01"
down_revision = "safety_recovery_01"
branch_labels = None
depends_on = None

TABLES = (("report_definitions", "export_definitions"), ("report_runs", "export_runs"))
# (table after the rename, old index name, new index name, columns)
INDEXES = (
    ("export_definitions", "ix_report_definitions_facility_id", "ix_export_definitions_facility_id",
     ["facility_id"]),
    ("export_definitions", "ix_report_definitions_due", "ix_export_definitions_due",
     ["enabled", "next_due_at"]),
    ("export_runs", "ix_report_runs_report_id", "ix_export_runs_export_id", ["export_id"]),
    ("export_runs", "ix_report_runs_state_started", "ix_export_runs_state_started",
     ["state", "started_at"]),
)
# PostgreSQL's own names for the keys and sequences it made at CREATE TABLE.
PG_CONSTRAINTS = (
    ("export_definitions", "report_definitions_pkey", "export_definitions_pkey"),
    ("export_definitions", "report_definitions_facility_id_fkey", "export_definitions_facility_id_fkey"),
    ("export_definitions", "report_definitions_created_by_fkey", "export_definitions_created_by_fkey"),
    ("export_definitions", "uq_report_definitions_facility_name", "uq_export_definitions_facility_name"),
    ("export_runs", "report_runs_pkey", "export_runs_pkey"),
    ("export_runs", "report_runs_report_id_fkey", "export_runs_export_id_fkey"),
    ("export_runs", "report_runs_run_key_key", "export_runs_run_key_key"),
)
PG_SEQUENCES = (("report_definitions_id_seq", "export_definitions_id_seq"),
                ("report_runs_id_seq", "export_runs_id_seq"))


def _rename(forward: bool) -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    pick = (lambda old, new: (old, new)) if forward else (lambda old, new: (new, old))
    for old, new in TABLES:
        op.rename_table(*pick(old, new))
    column_from, column_to = pick("report_id", "export_id")
    runs = pick("report_runs", "export_runs")[1]
    # RENAME COLUMN: PostgreSQL and SQLite >= 3.25 alike; SQLite rewrites index definitions.
    op.execute(f"ALTER TABLE {runs} RENAME COLUMN {column_from} TO {column_to}")
    for table, old_index, new_index, columns in INDEXES:
        table = table if forward else dict((n, o) for o, n in TABLES)[table]
        src, dst = pick(old_index, new_index)
        if postgres:
            op.execute(f"ALTER INDEX {src} RENAME TO {dst}")
        else:  # SQLite cannot rename an index: the same index under its new name
            cols = [column_to if c == "export_id" else c for c in columns]
            op.drop_index(src, table_name=table)
            op.create_index(dst, table, cols)
    if not postgres:
        return  # SQLite names keys inside the table's text; they keep working as they are
    for table, old_name, new_name in PG_CONSTRAINTS:
        table = table if forward else dict((n, o) for o, n in TABLES)[table]
        src, dst = pick(old_name, new_name)
        op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {src} TO {dst}")
    for old_seq, new_seq in PG_SEQUENCES:
        src, dst = pick(old_seq, new_seq)
        op.execute(f"ALTER SEQUENCE IF EXISTS {src} RENAME TO {dst}")


def upgrade() -> None:
    _rename(forward=True)


def downgrade() -> None:
    _rename(forward=False)
