"""The bounds of request values, declared once for every surface's protocol.

The types are ``Annotated`` numbers and strings with their bounds (a field is
``temperature: bounds.Temperature | None = None``); the constants cap sizes.  Every number a
request may carry is bounded, so a bad value is a 400 before it reaches the engine.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 1000
MAX_TOKENS_CAP = 1_000_000
MAX_MESSAGES = 4096
MAX_LOGIT_BIAS = 1024  # entries
MAX_TOKEN_ID = 2**31 - 1  # llama.cpp's token ids are int32
MAX_INPUTS = 2048  # embedding inputs per request, OpenAI's limit
# A tool's description: agents write long ones (Claude Code's Workflow tool: over 10,000).
MAX_DESCRIPTION = 200_000


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(ge=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=0, le=1_000_000)]
MinP = Annotated[float, Field(ge=0.0, le=1.0)]
RepeatPenalty = Annotated[float, Field(gt=0.0, le=10.0)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
TokenLimit = Annotated[int, Field(ge=1, le=MAX_TOKENS_CAP)]
TopLogprobs = Annotated[int, Field(ge=0, le=20)]
ContextLength = Annotated[int, Field(ge=64, le=1 << 20)]
TTL = Annotated[float, Field(gt=0, le=365 * 24 * 3600)]  # seconds a JIT-loaded model stays
ResponseId = Annotated[str, Field(max_length=200)]  # a stored turn's id, as clients send it
Token = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
