"""narrow hash table for lookups

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 07:06:37.096509
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('photo_hashes',
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('pdq', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['photo_id'], ['photos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('photo_id')
    )
    # every existing photo's hash, in the narrow table the lookup reads
    op.execute("INSERT INTO photo_hashes (photo_id, user_id, pdq) SELECT id, user_id, pdq FROM photos")


def downgrade() -> None:
    op.drop_table('photo_hashes')
