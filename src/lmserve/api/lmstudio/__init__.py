"""LM Studio's native REST API: v0, and v1 with its stateful chat."""
