"""review pass and check-in

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 06:12:28.993583
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('review_actions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.Column('organiser_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=True),
    sa.Column('note', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['organiser_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['photo_id'], ['photos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('review_actions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_actions_photo_id'), ['photo_id'], unique=False)

    with op.batch_alter_table('photos', schema=None) as batch_op:
        batch_op.add_column(sa.Column('review_reason', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('review_note', sa.String(length=500), nullable=True))
        batch_op.create_index(batch_op.f('ix_photos_status'), ['status'], unique=False)
        batch_op.create_index('ix_photos_user_status', ['user_id', 'status'], unique=False)

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pass_code', sa.String(length=12), nullable=True))
        batch_op.add_column(sa.Column('checked_in_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('checked_in_by_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_users_accepted_count'), ['accepted_count'], unique=False)
        batch_op.create_index(batch_op.f('ix_users_checked_in_at'), ['checked_in_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_users_last_upload_at'), ['last_upload_at'], unique=False)
        batch_op.create_index('ix_users_pass_code', ['pass_code'], unique=True)
        batch_op.create_foreign_key('fk_users_checked_in_by', 'users', ['checked_in_by_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_constraint('fk_users_checked_in_by', type_='foreignkey')
        batch_op.drop_index('ix_users_pass_code')
        batch_op.drop_index(batch_op.f('ix_users_last_upload_at'))
        batch_op.drop_index(batch_op.f('ix_users_checked_in_at'))
        batch_op.drop_index(batch_op.f('ix_users_accepted_count'))
        batch_op.drop_column('checked_in_by_id')
        batch_op.drop_column('checked_in_at')
        batch_op.drop_column('pass_code')

    with op.batch_alter_table('photos', schema=None) as batch_op:
        batch_op.drop_index('ix_photos_user_status')
        batch_op.drop_index(batch_op.f('ix_photos_status'))
        batch_op.drop_column('review_note')
        batch_op.drop_column('review_reason')

    with op.batch_alter_table('review_actions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_actions_photo_id'))

    op.drop_table('review_actions')
