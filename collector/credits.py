"""Quota and progress: how far a contributor is toward paying the fee."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import User


@dataclass(frozen=True)
class Progress:
    accepted: int
    quota: int

    @property
    def complete(self) -> bool:
        return self.accepted >= self.quota

    @property
    def remaining(self) -> int:
        return max(self.quota - self.accepted, 0)

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "quota": self.quota, "complete": self.complete}


def progress_of(session: Session, user_id: int, quota: int) -> Progress:
    accepted = session.scalar(select(User.accepted_count).where(User.id == user_id)) or 0
    return Progress(accepted, quota)
