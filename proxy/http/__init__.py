"""The HTTP layer: the app factory, its routes, health, metrics, the gunicorn entry points."""
