"""Radiology reports' routes: the reports, their comment threads, consults and notifications."""
