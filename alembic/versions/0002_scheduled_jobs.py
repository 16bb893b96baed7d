"""scheduled jobs: performance_snapshots, daily_event_rollups (the archive), scheduled_job_runs (once per window)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROLLUP_DIMENSIONS = [
    ('service_type', 16), ('status', 16), ('zone', 128), ('firm_id', 128), ('detector', 64), ('user_type', 64),
    ('channel', 16), ('notification_type', 64), ('plan', 64), ('action', 16), ('currency', 3), ('credit_type', 16),
    ('method', 8), ('endpoint', 200),
]


def upgrade() -> None:
    op.create_table('performance_snapshots',
    sa.Column('subject_type', sa.String(length=8), nullable=False),
    sa.Column('subject', sa.String(length=128), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('completed', sa.Integer(), nullable=False),
    sa.Column('cancelled', sa.Integer(), nullable=False),
    sa.Column('pranks', sa.Integer(), nullable=False),
    sa.Column('response_time_p50', sa.Float(), nullable=True),
    sa.Column('response_time_p95', sa.Float(), nullable=True),
    sa.Column('completion_ratio', sa.Float(), nullable=True),
    sa.Column('prank_ratio', sa.Float(), nullable=True),
    sa.Column('computed_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('subject_type', 'subject', 'window_start', name=op.f('pk_performance_snapshots'))
    )
    op.create_index('ix_performance_snapshots_window', 'performance_snapshots', ['window_start', 'subject_type'], unique=False)
    op.create_table('daily_event_rollups',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    *[sa.Column(name, sa.String(length=length), nullable=False) for name, length in _ROLLUP_DIMENSIONS],
    sa.Column('http_status', sa.SmallInteger(), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('events', sa.BigInteger(), nullable=False),
    sa.Column('failures', sa.BigInteger(), nullable=False),
    sa.Column('lockouts', sa.BigInteger(), nullable=False),
    sa.Column('response_time_count', sa.BigInteger(), nullable=False),
    sa.Column('response_time_sum', sa.Float(), nullable=False),
    sa.Column('credits', sa.BigInteger(), nullable=False),
    sa.Column('amount', sa.Numeric(precision=20, scale=4), nullable=False),
    sa.Column('duration_sum', sa.Float(), nullable=False),
    sa.Column('cache_hits', sa.BigInteger(), nullable=False),
    sa.Column('cache_misses', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint(
        'day', 'kind', *[name for name, _ in _ROLLUP_DIMENSIONS], 'http_status', 'source',
        name=op.f('pk_daily_event_rollups'),
    )
    )
    op.create_table('scheduled_job_runs',
    sa.Column('job', sa.String(length=64), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('owner', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('job', 'window_start', name=op.f('pk_scheduled_job_runs'))
    )


def downgrade() -> None:
    op.drop_table('scheduled_job_runs')
    op.drop_table('daily_event_rollups')
    op.drop_index('ix_performance_snapshots_window', table_name='performance_snapshots')
    op.drop_table('performance_snapshots')
