"""Anthropic's Messages API, served as chat completions, its errors in Anthropic's shape."""
