"""report comments (every version kept), consults with their state rows, addenda,
notifications with read state, and mail preferences

Revision ID: consults_01
Revises: reports_02
Create Date: 2026-12-06 19:15:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'consults_01'
down_revision = 'reports_02'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'report_comments',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('report_id', sa.Integer(), nullable=False),
        sa.Column('facility_id', sa.Integer(), nullable=False),
        sa.Column('thread_key', sa.String(length=32), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('author_id', sa.Integer(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('recipients', sa.JSON(), nullable=False),
        sa.Column('created_at', TS, nullable=False),
        sa.ForeignKeyConstraint(['report_id'], ['radiology_reports.id']),
        sa.ForeignKeyConstraint(['facility_id'], ['facilities.id']),
        sa.ForeignKeyConstraint(['author_id'], ['users.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('thread_key', 'version'),
        sa.CheckConstraint('length(text) <= 4000', name='ck_report_comments_text_length'),
    )
    op.create_index('ix_report_comments_report_id', 'report_comments', ['report_id'])
    op.create_index('ix_report_comments_facility_id', 'report_comments', ['facility_id'])
    op.create_index('ix_report_comments_report_created', 'report_comments', ['report_id', 'created_at'])

    op.create_table(
        'consult_requests',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('report_id', sa.Integer(), nullable=False),
        sa.Column('facility_id', sa.Integer(), nullable=False),
        sa.Column('requester_id', sa.Integer(), nullable=False),
        sa.Column('consultant_id', sa.Integer(), nullable=True),
        sa.Column('subspecialty', sa.String(length=64), nullable=True),
        sa.Column('question', sa.Text(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('due_at', TS, nullable=False),
        sa.Column('reminded_at', TS, nullable=True),
        sa.Column('reoffers', sa.Integer(), nullable=False),
        sa.Column('created_at', TS, nullable=False),
        sa.Column('updated_at', TS, nullable=False),
        sa.ForeignKeyConstraint(['report_id'], ['radiology_reports.id']),
        sa.ForeignKeyConstraint(['facility_id'], ['facilities.id']),
        sa.ForeignKeyConstraint(['requester_id'], ['users.id']),
        sa.ForeignKeyConstraint(['consultant_id'], ['users.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.CheckConstraint('length(question) <= 4000', name='ck_consult_requests_question_length'),
    )
    op.create_index('ix_consult_requests_report_id', 'consult_requests', ['report_id'])
    op.create_index('ix_consult_requests_facility_id', 'consult_requests', ['facility_id'])
    op.create_index('ix_consult_requests_consultant_id', 'consult_requests', ['consultant_id'])
    op.create_index('ix_consult_requests_state_due', 'consult_requests', ['state', 'due_at'])

    op.create_table(
        'consult_state_changes',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('consult_id', sa.Integer(), nullable=False),
        sa.Column('from_state', sa.String(length=16), nullable=True),
        sa.Column('to_state', sa.String(length=16), nullable=False),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('actor_id', sa.Integer(), nullable=True),
        sa.Column('at', TS, nullable=False),
        sa.ForeignKeyConstraint(['consult_id'], ['consult_requests.id']),
        sa.ForeignKeyConstraint(['actor_id'], ['users.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_consult_state_changes_consult_id', 'consult_state_changes', ['consult_id'])

    op.create_table(
        'report_addenda',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('report_id', sa.Integer(), nullable=False),
        sa.Column('facility_id', sa.Integer(), nullable=False),
        sa.Column('consult_id', sa.Integer(), nullable=True),
        sa.Column('author_id', sa.Integer(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('created_at', TS, nullable=False),
        sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
        sa.Column('instance_id', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['report_id'], ['radiology_reports.id']),
        sa.ForeignKeyConstraint(['facility_id'], ['facilities.id']),
        sa.ForeignKeyConstraint(['consult_id'], ['consult_requests.id']),
        sa.ForeignKeyConstraint(['author_id'], ['users.id']),
        sa.ForeignKeyConstraint(['instance_id'], ['instances.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('sop_instance_uid'),
        sa.CheckConstraint('length(text) <= 4000', name='ck_report_addenda_text_length'),
    )
    op.create_index('ix_report_addenda_report_id', 'report_addenda', ['report_id'])
    op.create_index('ix_report_addenda_facility_id', 'report_addenda', ['facility_id'])

    op.create_table(
        'notifications',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('facility_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('report_id', sa.Integer(), nullable=True),
        sa.Column('comment_id', sa.Integer(), nullable=True),
        sa.Column('consult_id', sa.Integer(), nullable=True),
        sa.Column('created_at', TS, nullable=False),
        sa.Column('read_at', TS, nullable=True),
        sa.Column('mailed_at', TS, nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id']),
        sa.ForeignKeyConstraint(['facility_id'], ['facilities.id']),
        sa.ForeignKeyConstraint(['report_id'], ['radiology_reports.id']),
        sa.ForeignKeyConstraint(['comment_id'], ['report_comments.id']),
        sa.ForeignKeyConstraint(['consult_id'], ['consult_requests.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('user_id', 'comment_id', name='uq_notifications_user_comment'),
    )
    op.create_index('ix_notifications_user_unread', 'notifications', ['user_id', 'read_at'])

    op.create_table(
        'mail_preferences',
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('mode', sa.String(length=8), nullable=False),
        sa.Column('unsubscribe_token', sa.String(length=64), nullable=False),
        sa.Column('digest_sent_at', TS, nullable=True),
        sa.Column('updated_at', TS, nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id']),
        sa.PrimaryKeyConstraint('user_id'),
        sa.UniqueConstraint('unsubscribe_token'),
    )


def downgrade() -> None:
    op.drop_table('mail_preferences')
    op.drop_index('ix_notifications_user_unread', table_name='notifications')
    op.drop_table('notifications')
    op.drop_index('ix_report_addenda_facility_id', table_name='report_addenda')
    op.drop_index('ix_report_addenda_report_id', table_name='report_addenda')
    op.drop_table('report_addenda')
    op.drop_index('ix_consult_state_changes_consult_id', table_name='consult_state_changes')
    op.drop_table('consult_state_changes')
    for name in ('ix_consult_requests_state_due', 'ix_consult_requests_consultant_id',
                 'ix_consult_requests_facility_id', 'ix_consult_requests_report_id'):
        op.drop_index(name, table_name='consult_requests')
    op.drop_table('consult_requests')
    for name in ('ix_report_comments_report_created', 'ix_report_comments_facility_id',
                 'ix_report_comments_report_id'):
        op.drop_index(name, table_name='report_comments')
    op.drop_table('report_comments')
