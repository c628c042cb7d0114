"""plate reads and plates

Revision ID: 0010_plates
Revises: 0007_web
Create Date: 2026-11-26 12:45:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0010_plates'
down_revision = '0009_phone'  # "0004" in the brief; re-chained at merge after 0005, 0007_web, 0009_phone
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No back-fill needed: a credited photo without a plate_reads row is pending, so the
    # worker reads every photo accepted before this existed.
    op.create_table('plate_reads',
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('claim', sa.String(length=32), nullable=False),
    sa.Column('worker', sa.String(length=100), nullable=False),
    sa.Column('claimed_at', sa.DateTime(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('read_at', sa.DateTime(), nullable=True),
    sa.Column('cpu_ms', sa.Integer(), nullable=True),
    sa.Column('error', sa.String(length=300), nullable=True),
    sa.Column('credit_held', sa.String(length=20), nullable=True),
    sa.Column('reviewed_by_id', sa.Integer(), nullable=True),
    sa.Column('similar_to_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['photo_id'], ['photos.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reviewed_by_id'], ['users.id']),
    sa.PrimaryKeyConstraint('photo_id')
    )
    op.create_index('ix_plate_reads_state_claimed', 'plate_reads', ['state', 'claimed_at'], unique=False)
    op.create_table('photo_plates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('x', sa.Integer(), nullable=True),
    sa.Column('y', sa.Integer(), nullable=True),
    sa.Column('w', sa.Integer(), nullable=True),
    sa.Column('h', sa.Integer(), nullable=True),
    sa.Column('machine_text', sa.String(length=20), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('text', sa.String(length=20), nullable=False),
    sa.Column('source', sa.String(length=10), nullable=False),
    sa.ForeignKeyConstraint(['photo_id'], ['photos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ux_photo_plates_photo_position', 'photo_plates', ['photo_id', 'position'], unique=True)
    op.create_index('ix_photo_plates_text', 'photo_plates', ['text'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_photo_plates_text', table_name='photo_plates')
    op.drop_index('ux_photo_plates_photo_position', table_name='photo_plates')
    op.drop_table('photo_plates')
    op.drop_index('ix_plate_reads_state_claimed', table_name='plate_reads')
    op.drop_table('plate_reads')
