"""exact counting: metric_events.stored_by (the ingest attempt), rejected_events (payloads kept)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 11:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('metric_events') as batch:
        batch.add_column(sa.Column('stored_by', sa.Uuid(), nullable=True))
    op.create_index(op.f('ix_metric_events_stored_by'), 'metric_events', ['stored_by'], unique=False)
    op.create_table('rejected_events',
    sa.Column('message_id', sa.String(length=200), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('rejected_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('stored_by', sa.Uuid(), nullable=True),
    sa.PrimaryKeyConstraint('message_id', 'position', name=op.f('pk_rejected_events'))
    )
    op.create_index('ix_rejected_events_rejected_at', 'rejected_events', ['rejected_at'], unique=False)
    op.create_index('ix_rejected_events_reason', 'rejected_events', ['reason', 'rejected_at'], unique=False)
    op.create_index(op.f('ix_rejected_events_stored_by'), 'rejected_events', ['stored_by'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_rejected_events_stored_by'), table_name='rejected_events')
    op.drop_index('ix_rejected_events_reason', table_name='rejected_events')
    op.drop_index('ix_rejected_events_rejected_at', table_name='rejected_events')
    op.drop_table('rejected_events')
    op.drop_index(op.f('ix_metric_events_stored_by'), table_name='metric_events')
    with op.batch_alter_table('metric_events') as batch:
        batch.drop_column('stored_by')
