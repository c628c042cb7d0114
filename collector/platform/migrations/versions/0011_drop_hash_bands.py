"""drop the band index table: near-duplicates are looked up in each process's memory

Revision ID: 0011_drop_hash_bands
Revises: 0010_plates
Create Date: 2026-12-07 05:00:00

``photo_hash_bands`` held 16 rows per photo for a lookup in SQL that the in-memory index
(``collector.intake.dedup.NearIndex``, built from ``photo_hashes``) replaced: writing them
was a sixth of the intake lock's hold time at a million photos. A downgrade rebuilds them
from ``photo_hashes``.
"""
import sqlalchemy as sa
from alembic import op

revision = '0011_drop_hash_bands'
down_revision = '0010_plates'
branch_labels = None
depends_on = None

BANDS = 16


def upgrade() -> None:
    with op.batch_alter_table('photo_hash_bands', schema=None) as batch_op:
        batch_op.drop_index('ix_photo_hash_bands_photo_id')
    op.drop_table('photo_hash_bands')


def downgrade() -> None:
    bands = op.create_table('photo_hash_bands',
    sa.Column('key', sa.Integer(), nullable=False),
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['photo_id'], ['photos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key', 'photo_id')
    )
    conn = op.get_bind()
    last = 0
    while True:  # in chunks: a million photos are 16 million rows
        rows = conn.execute(sa.text("SELECT photo_id, pdq FROM photo_hashes WHERE photo_id > :last ORDER BY photo_id LIMIT 10000"),
                            {"last": last}).all()
        if not rows:
            break
        op.bulk_insert(bands, [{"key": (b << 16) | int(pdq[4 * b: 4 * b + 4], 16), "photo_id": pid}
                               for pid, pdq in rows for b in range(BANDS)])
        last = rows[-1][0]
    with op.batch_alter_table('photo_hash_bands', schema=None) as batch_op:
        batch_op.create_index('ix_photo_hash_bands_photo_id', ['photo_id'], unique=False)
