"""Radiology reports: reports back from the PACS, comments, consults and addenda."""
