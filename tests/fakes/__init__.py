"""Fake platform APIs: aiohttp applications that validate requests as the platform documents
and answer as it does, run by tests on port 0 (``aiohttp_server``)."""
