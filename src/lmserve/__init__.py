"""lmserve: an OpenAI-compatible local LLM server on llama.cpp."""

__version__ = "0.1.0"
