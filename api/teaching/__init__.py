"""The teaching file over HTTP (``/api/v1/teaching``)."""
