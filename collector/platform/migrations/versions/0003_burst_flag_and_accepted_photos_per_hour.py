"""burst flag and accepted photos per hour

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 06:21:20.583660
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accepted_hours',
    sa.Column('hour', sa.DateTime(), nullable=False),
    sa.Column('accepted', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('hour')
    )
    with op.batch_alter_table('photos', schema=None) as batch_op:
        batch_op.add_column(sa.Column('burst', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index(batch_op.f('ix_photos_burst'), ['burst'], unique=False)
        batch_op.create_index('ix_photos_user_captured', ['user_id', 'captured_at'], unique=False)
    _backfill()


def _backfill() -> None:
    """Existing photos: their hourly counts, and which were taken in a burst."""
    import datetime as dt
    from collections import Counter

    conn = op.get_bind()
    photos = sa.table("photos", sa.column("id"), sa.column("user_id"), sa.column("captured_at"),
                      sa.column("created_at"), sa.column("status"), sa.column("burst"))
    hours = Counter()
    by_user = {}
    for pid, uid, captured, created, status in conn.execute(
        sa.select(photos.c.id, photos.c.user_id, photos.c.captured_at, photos.c.created_at, photos.c.status)
    ):
        if isinstance(created, str):
            created = dt.datetime.fromisoformat(created)
        if isinstance(captured, str):
            captured = dt.datetime.fromisoformat(captured)
        if status in ("accepted", "flagged"):
            hours[created.replace(minute=0, second=0, microsecond=0)] += 1
        if captured is not None:
            by_user.setdefault(uid, []).append((captured, pid))
    if hours:
        table = sa.table("accepted_hours", sa.column("hour"), sa.column("accepted"))
        op.bulk_insert(table, [{"hour": h, "accepted": n} for h, n in sorted(hours.items())])
    burst = set()
    for shots in by_user.values():
        shots.sort()
        for (a, pa), (b, pb) in zip(shots, shots[1:], strict=False):
            if (b - a).total_seconds() <= 2:
                burst.update((pa, pb))
    for pid in burst:
        conn.execute(sa.update(photos).where(photos.c.id == pid).values(burst=True))



def downgrade() -> None:
    with op.batch_alter_table('photos', schema=None) as batch_op:
        batch_op.drop_index('ix_photos_user_captured')
        batch_op.drop_index(batch_op.f('ix_photos_burst'))
        batch_op.drop_column('burst')

    op.drop_table('accepted_hours')
