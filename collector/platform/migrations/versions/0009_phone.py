"""resumable (tus) uploads

Revision ID: 0009_phone
Revises: 0007_web
"""
import sqlalchemy as sa
from alembic import op

revision = '0009_phone'
down_revision = '0007_web'  # '0004' in the brief; re-chained after merging main (0005, 0007_web)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('resumable_uploads',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('length', sa.BigInteger(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('parts', sa.String(length=2000), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('verdict', sa.String(length=4000), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_resumable_uploads_user_id', 'resumable_uploads', ['user_id'])
    op.create_index('ix_resumable_uploads_expires_at', 'resumable_uploads', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_resumable_uploads_expires_at', table_name='resumable_uploads')
    op.drop_index('ix_resumable_uploads_user_id', table_name='resumable_uploads')
    op.drop_table('resumable_uploads')
