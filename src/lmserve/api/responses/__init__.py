"""OpenAI's Responses API: stateful turns over the shared conversation store."""
