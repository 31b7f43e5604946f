"""OpenAI's API: models, chat and text completions, embeddings."""
