"""http summaries: metric_events.request_count and duration_buckets (kind http_summary)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns with no default: PostgreSQL adds them without rewriting the table.
    with op.batch_alter_table('metric_events') as batch:
        batch.add_column(sa.Column('request_count', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('duration_buckets', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('metric_events') as batch:
        batch.drop_column('duration_buckets')
        batch.drop_column('request_count')
