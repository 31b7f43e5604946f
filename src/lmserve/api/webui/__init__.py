"""The chat page at ``/`` and the conversations it keeps on the server (``/lmserve/conversations``).

``assets.py`` serves the page's static files (``static/``) with their security headers;
``store.py`` is the SQLite database of conversations; ``service.py`` runs it off the event loop
and turns its failures into API errors; ``protocol.py`` is the shape of what the page sends.
"""
