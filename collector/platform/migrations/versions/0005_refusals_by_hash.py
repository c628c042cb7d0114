"""refusals looked up by hash

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 13:05:00
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_upload_rejections_sha256', 'upload_rejections', ['sha256'])


def downgrade() -> None:
    op.drop_index('ix_upload_rejections_sha256', table_name='upload_rejections')
