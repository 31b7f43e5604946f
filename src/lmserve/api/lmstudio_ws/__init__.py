"""LM Studio's WebSocket SDK protocol (``lmstudio`` on PyPI, ``@lmstudio/sdk`` on npm)."""
