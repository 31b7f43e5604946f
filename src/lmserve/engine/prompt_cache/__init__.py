"""The prompt cache: sequence states kept beyond the slots, in memory and on disk.

:class:`~lmserve.engine.prompt_cache.cache.PromptCache` is its one owner and interface;
``state.py`` reads and writes llama.cpp's sequence states, ``blocks.py`` indexes them by
their tokens, ``disk.py`` keeps them in files, and ``settings.py`` holds what the server
process may import (it never loads llama.cpp): the budgets and the folder's key facts.
"""
