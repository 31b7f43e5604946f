"""A model split over llama.cpp RPC workers: the workers (``lmserve rpc-worker``), the checks
of an endpoint before llama.cpp sees it (:mod:`probe`) and llama.cpp's device and RPC
functions (:mod:`ggml`)."""
