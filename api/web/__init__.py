"""The browser and phone app: the upload screen (/upload) with its study board, the phone
capture page (/capture), the web manifest and service worker, and the built assets.

The page sources live in web/ (npm, bundled by esbuild); the built, content-hashed files are
committed in api/web/static/dist, so the Python package needs no Node at install or run time.
"""
