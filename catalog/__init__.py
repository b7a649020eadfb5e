"""The SQLite catalog: typed SQLAlchemy models, Alembic migrations, and the queries zap uses."""

from .db import Catalog
from .models import Base, Checkpoint, Chunk, ImageFile, Intent, Pack, Pod, Setting

__all__ = ["Base", "Catalog", "Checkpoint", "Chunk", "ImageFile", "Intent", "Pack", "Pod", "Setting"]
