"""Models on disk: the catalog, the default model and the GGUF header reader."""
