"""The intake API: a thin Flask app that validates, stages, commits and enqueues."""

from api.app import create_app

__all__ = ["create_app"]
