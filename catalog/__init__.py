"""The SQLite catalog: typed SQLAlchemy models, Alembic migrations, and the queries zap uses."""

from .db import Catalog
from .models import Base, Checkpoint, Pod, Setting

__all__ = ["Base", "Catalog", "Checkpoint", "Pod", "Setting"]
