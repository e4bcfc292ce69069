"""The RelayPACS domain: intake, assembly, DICOM grouping, forwarding.

Importable and testable without Flask or Celery. Functions here take an explicit
SQLAlchemy session and never commit: the caller owns the transaction.
"""
