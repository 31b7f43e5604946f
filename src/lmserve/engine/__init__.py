"""Generation: llama.cpp binding, continuous-batching scheduler, sampling, chat templates."""
