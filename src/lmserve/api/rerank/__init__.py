"""Reranking: ``/v1/rerank`` (also ``/rerank`` and ``/v2/rerank``) in the Jina and Cohere
shape that llama-server and vLLM serve."""
