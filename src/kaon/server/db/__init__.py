"""Storage: ORM tables, the engine and session factory, and Alembic migrations."""
