"""event store: metric_events (one row per event, unique event_id) and label_values (label caps)

Revision ID: 0001
Revises:
Create Date: 2026-11-24 14:02:54.550300
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('label_values',
    sa.Column('dimension', sa.String(length=32), nullable=False),
    sa.Column('value', sa.String(length=200), nullable=False),
    sa.Column('admitted_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('dimension', 'value', name=op.f('pk_label_values'))
    )
    op.create_table('metric_events',
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stored_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('service_type', sa.String(length=16), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=True),
    sa.Column('zone', sa.String(length=128), nullable=True),
    sa.Column('firm_id', sa.String(length=128), nullable=True),
    sa.Column('response_time_seconds', sa.Float(), nullable=True),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('detector', sa.String(length=64), nullable=True),
    sa.Column('user_type', sa.String(length=64), nullable=True),
    sa.Column('success', sa.Boolean(), nullable=True),
    sa.Column('account_locked', sa.Boolean(), nullable=True),
    sa.Column('channel', sa.String(length=16), nullable=True),
    sa.Column('notification_type', sa.String(length=64), nullable=True),
    sa.Column('subscription_id', sa.String(length=128), nullable=True),
    sa.Column('plan', sa.String(length=64), nullable=True),
    sa.Column('action', sa.String(length=16), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('customer_id', sa.String(length=128), nullable=True),
    sa.Column('credit_type', sa.String(length=16), nullable=True),
    sa.Column('credits', sa.BigInteger(), nullable=True),
    sa.Column('amount', sa.Numeric(precision=18, scale=4), nullable=True),
    sa.Column('method', sa.String(length=8), nullable=True),
    sa.Column('endpoint', sa.String(length=200), nullable=True),
    sa.Column('http_status', sa.SmallInteger(), nullable=True),
    sa.Column('duration_seconds', sa.Float(), nullable=True),
    sa.Column('source', sa.String(length=64), nullable=True),
    sa.Column('websocket_connections', sa.Integer(), nullable=True),
    sa.Column('cache_hits', sa.BigInteger(), nullable=True),
    sa.Column('cache_misses', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_metric_events'))
    )
    op.create_index('ix_metric_events_kind_occurred_at', 'metric_events', ['kind', 'occurred_at'], unique=False)
    op.create_index('ix_metric_events_panic_window', 'metric_events', ['occurred_at', 'zone', 'firm_id'], unique=False, postgresql_where=sa.text("kind = 'panic_request'"), sqlite_where=sa.text("kind = 'panic_request'"))
    op.create_index('ix_metric_events_subscription', 'metric_events', ['subscription_id', 'occurred_at'], unique=False, postgresql_where=sa.text("kind = 'subscription'"), sqlite_where=sa.text("kind = 'subscription'"))


def downgrade() -> None:
    op.drop_index('ix_metric_events_subscription', table_name='metric_events', postgresql_where=sa.text("kind = 'subscription'"), sqlite_where=sa.text("kind = 'subscription'"))
    op.drop_index('ix_metric_events_panic_window', table_name='metric_events', postgresql_where=sa.text("kind = 'panic_request'"), sqlite_where=sa.text("kind = 'panic_request'"))
    op.drop_index('ix_metric_events_kind_occurred_at', table_name='metric_events')
    op.drop_table('metric_events')
    op.drop_table('label_values')
