"""The issue's snippet, verbatim but for the model id, with the official SDK, sync and async."""

from __future__ import annotations

from openai import AsyncOpenAI, OpenAI

from tests.conftest import MODEL_ID, Server


def test_models_list_has_the_default_model(client: OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == [MODEL_ID]


def test_readme_snippet(server: Server) -> None:
    client = OpenAI(base_url=server.api_url, api_key="lm-studio")
    model = client.models.list().data[0].id
    completion = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "Always answer in rhymes."},
            {"role": "user", "content": "Introduce yourself."},
        ],
        temperature=0.7,
    )
    message = completion.choices[0].message
    assert message.role == "assistant"
    assert message.content and message.content.strip()
    assert completion.object == "chat.completion"
    assert completion.model == MODEL_ID
    assert completion.choices[0].finish_reason in {"stop", "length"}
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 10 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_async_client_completion_and_stream(server: Server) -> None:
    async with AsyncOpenAI(base_url=server.api_url, api_key="anything") as client:
        completion = await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=16,
            temperature=0,
        )
        text = completion.choices[0].message.content
        assert text
        stream = await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=16,
            temperature=0,
            stream=True,
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        assert "".join(pieces) == text
