"""Celery workers: the app, thin tasks over pipeline/, and the chains that join them.

``celery -A workers worker -Q pacs`` (or ``relaypacs worker -Q pacs``) runs one pool.
"""

from workers.app import app

__all__ = ["app"]
