"""The ``lmserve`` command line."""
