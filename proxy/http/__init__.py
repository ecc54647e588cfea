"""The HTTP layer: the app factory, its routes (every inference route through one pipeline), health, metrics, the gunicorn entry points."""
