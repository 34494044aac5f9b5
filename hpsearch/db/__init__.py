"""The results database: models (models.py), engines (engine.py), migrations (migrate.py)."""
