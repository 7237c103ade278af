"""Celery app and tasks: thin, they call the `crawler` library."""
