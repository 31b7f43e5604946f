"""Images through every surface to a real vision model, with each surface's own client.

A server runs SmolLM2 with a tiny vision projector (``tests/vision_assets.py``: 16 image
tokens, random weights): each surface's request with an image has more prompt tokens than the
same request without, by exactly what the OpenAI chat route counts for that image (its tokens
and the text around them); different images give different greedy answers, or different
log-probabilities where the surface returns them; and the shared server's model, which has no
projector, answers an image with the surface's own 400 saying so.  How each surface's request
becomes a chat request is ``test_image_requests.py``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import lmstudio as lms
import openai
import pytest
from lmstudio import LMStudioServerError

from tests.conftest import MODEL_ID, Server, install_default_model, start_server
from tests.test_lmstudio_sdk_js import node_modules, run_script  # noqa: F401 (a fixture)
from tests.vision_assets import IMAGE_TOKENS, data_url, image_bytes, write_projector

QUESTION = "Describe this picture."
SEEDS = (0, 1, 2)  # three different images
ANSWER_TOKENS = 24
NO_VISION = "does not support images"


def png(seed: int = 0) -> bytes:
    return image_bytes("PNG", (64, 64), seed)


def png_url(seed: int = 0) -> str:
    return data_url(png(seed), "image/png")


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory, default_model_file: Path) -> Iterator[Server]:
    """SmolLM2 with the tiny projector, given with --mmproj."""
    home = tmp_path_factory.mktemp("vision-surfaces")
    install_default_model(home, default_model_file)
    projector = write_projector(home / "projectors" / "mmproj-tiny.gguf", n_embd=576, seed=0)
    started = start_server(home, "--mmproj", str(projector))
    try:
        yield started
    finally:
        started.stop()


def chat_prompt_tokens(server: Server, content: Any) -> int:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 1}
    answer = httpx.post(f"{server.api_url}/chat/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["usage"]["prompt_tokens"])


@pytest.fixture(scope="module")
def image_cost(vision: Server) -> int:
    """What one image after the question adds to a prompt, as OpenAI's chat route counts it:
    its tokens, and the text the projector wraps them in."""
    image = {"type": "image_url", "image_url": {"url": png_url()}}
    text = {"type": "text", "text": QUESTION}
    cost = chat_prompt_tokens(vision, [text, image]) - chat_prompt_tokens(vision, QUESTION)
    assert IMAGE_TOKENS <= cost <= IMAGE_TOKENS + 16
    return cost


def some_differ(answers: list[Any]) -> bool:
    return len({repr(answer) for answer in answers}) > 1


# -- Anthropic's /v1/messages ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def claude(vision: Server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=vision.base_url, api_key="x", max_retries=0) as client:
        yield client


def anthropic_image(seed: int = 0) -> dict[str, Any]:
    data = base64.b64encode(png(seed)).decode()
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


def anthropic_user(*images: dict[str, Any]) -> list[Any]:
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION}, *images]}]


def test_anthropic_an_image_adds_its_tokens(claude: anthropic.Anthropic, image_cost: int) -> None:
    counted = [
        claude.messages.count_tokens(model=MODEL_ID, messages=anthropic_user(*images)).input_tokens
        for images in ((), (anthropic_image(),))
    ]
    assert counted[1] - counted[0] == image_cost
    used = []
    for images in ((), (anthropic_image(),)):
        usage = claude.messages.create(
            model=MODEL_ID, max_tokens=1, messages=anthropic_user(*images)
        ).usage
        used.append(usage.input_tokens + (usage.cache_read_input_tokens or 0))
    assert used == counted


def test_anthropic_a_tool_results_image_is_read(claude: anthropic.Anthropic) -> None:
    def counted(*content: dict[str, Any]) -> int:
        messages: list[Any] = [
            {"role": "user", "content": "Take a screenshot."},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": content}],
            },
        ]
        return claude.messages.count_tokens(model=MODEL_ID, messages=messages).input_tokens

    text = {"type": "text", "text": "The screen."}
    assert counted(text, anthropic_image()) - counted(text) >= IMAGE_TOKENS


def test_anthropic_different_images_different_answers(claude: anthropic.Anthropic) -> None:
    answers = [
        claude.messages.create(
            model=MODEL_ID,
            max_tokens=ANSWER_TOKENS,
            messages=anthropic_user(anthropic_image(seed)),
            extra_body={"temperature": 0.0},  # this SDK's create takes no temperature
        ).content[0]
        for seed in SEEDS
    ]
    assert some_differ(answers)


def test_anthropic_a_model_without_a_projector_refuses(server: Server) -> None:
    with (
        anthropic.Anthropic(base_url=server.base_url, api_key="x", max_retries=0) as claude,
        pytest.raises(anthropic.BadRequestError) as refused,
    ):
        claude.messages.create(
            model=MODEL_ID, max_tokens=5, messages=anthropic_user(anthropic_image())
        )
    error = refused.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and NO_VISION in error["message"]


# -- OpenAI's /v1/responses -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def responses(vision: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=vision.api_url, api_key="x", max_retries=0) as client:
        yield client


def responses_input(*images: str) -> list[Any]:
    parts = [{"type": "input_image", "image_url": url, "detail": "auto"} for url in images]
    return [{"role": "user", "content": [{"type": "input_text", "text": QUESTION}, *parts]}]


def test_responses_an_image_adds_its_tokens(responses: openai.OpenAI, image_cost: int) -> None:
    tokens = [
        responses.responses.create(
            model=MODEL_ID, input=responses_input(*images), max_output_tokens=1
        ).usage.input_tokens  # type: ignore[union-attr]
        for images in ((), (png_url(),))
    ]
    assert tokens[1] - tokens[0] == image_cost


def test_responses_different_images_different_logprobs(responses: openai.OpenAI) -> None:
    firsts = []
    for seed in SEEDS[:2]:
        answer = responses.responses.create(
            model=MODEL_ID,
            input=responses_input(png_url(seed)),
            max_output_tokens=4,
            temperature=0.0,
            include=["message.output_text.logprobs"],
            store=False,
        )
        logprobs = answer.output[0].content[0].logprobs  # type: ignore[union-attr]
        assert logprobs
        firsts.append(round(logprobs[0].logprob, 6))
    assert firsts[0] != firsts[1]


def test_responses_a_stored_conversation_keeps_the_image(responses: openai.OpenAI) -> None:
    """The next turn's prompt, by ``previous_response_id``, is the one the whole conversation
    sent again gives: the stored first turn still holds its image."""
    first_input = responses_input(png_url())
    first = responses.responses.create(model=MODEL_ID, input=first_input, max_output_tokens=8)
    follow_up = [{"role": "user", "content": "And its colours?"}]
    chained = responses.responses.create(
        model=MODEL_ID, previous_response_id=first.id, input=follow_up, max_output_tokens=1
    )
    earlier_output = [item.model_dump(exclude_none=True) for item in first.output]
    whole = responses.responses.create(
        model=MODEL_ID,
        input=[*first_input, *earlier_output, *follow_up],
        max_output_tokens=1,
        store=False,
    )
    assert chained.usage.input_tokens == whole.usage.input_tokens  # type: ignore[union-attr]
    listed = responses.responses.input_items.list(chained.id, order="asc").data
    assert listed[0].content[1].type == "input_image"  # type: ignore[union-attr]


def test_responses_a_model_without_a_projector_refuses(server: Server) -> None:
    with (
        openai.OpenAI(base_url=server.api_url, api_key="x", max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as refused,
    ):
        client.responses.create(model=MODEL_ID, input=responses_input(png_url()))
    error = refused.value.body
    assert isinstance(error, dict) and NO_VISION in error["message"]
    assert error["code"] == "model_not_vision"


# -- LM Studio's /api/v1/chat and /api/v0/chat/completions ----------------------------------------


def native_chat(server: Server, *images: str, **fields: Any) -> httpx.Response:
    items = [{"type": "image", "data_url": url} for url in images]
    body = {
        "model": MODEL_ID,
        "input": [{"type": "message", "content": QUESTION}, *items],
        "temperature": 0.0,
        **fields,
    }
    return httpx.post(f"{server.base_url}/api/v1/chat", json=body, timeout=120)


def native_ok(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_native_chat_an_image_adds_its_tokens(vision: Server, image_cost: int) -> None:
    tokens = [
        native_ok(native_chat(vision, *images, max_output_tokens=1))["stats"]["input_tokens"]
        for images in ((), (png_url(),))
    ]
    assert tokens[1] - tokens[0] == image_cost
    body = {
        "model": MODEL_ID,
        "max_tokens": 1,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": QUESTION},
                    {"type": "image_url", "image_url": {"url": png_url()}},
                ],
            }
        ],
    }
    v0 = httpx.post(f"{vision.base_url}/api/v0/chat/completions", json=body, timeout=120)
    assert v0.status_code == 200, v0.text
    assert v0.json()["usage"]["prompt_tokens"] == tokens[1]


def test_native_chat_different_images_different_answers(vision: Server) -> None:
    answers = [
        native_ok(native_chat(vision, png_url(seed), max_output_tokens=ANSWER_TOKENS))["output"]
        for seed in SEEDS
    ]
    assert some_differ(answers)


def test_the_native_chat_thread_keeps_the_image(vision: Server) -> None:
    """A thread's next turn reads the first turn's image again: its prompt grows from the
    first one's by the same tokens whether the first turn held an image or not."""
    growth = []
    for images in ((), (png_url(),)):
        first = native_ok(native_chat(vision, *images, max_output_tokens=1))
        follow_up = {
            "model": MODEL_ID,
            "input": "And its colours?",
            "previous_response_id": first["response_id"],
            "max_output_tokens": 1,
        }
        second = native_ok(httpx.post(f"{vision.base_url}/api/v1/chat", json=follow_up))
        stats = first["stats"]
        read = stats["input_tokens"] + stats["total_output_tokens"]
        growth.append(second["stats"]["input_tokens"] - read)
    assert abs(growth[1] - growth[0]) <= 1  # the one answer token may tokenize apart


def test_native_chat_a_model_without_a_projector_refuses(server: Server) -> None:
    answer = native_chat(server, png_url(), max_output_tokens=1)
    assert answer.status_code == 400
    assert NO_VISION in answer.json()["error"]["message"]


# -- LM Studio's SDK ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk(vision: Server) -> Iterator[lms.Client]:
    with lms.Client(f"127.0.0.1:{vision.port}") as client:
        yield client


def sdk_chat(client: lms.Client, *seeds: int) -> lms.Chat:
    chat = lms.Chat()
    images = [client.files.prepare_image(png(seed), name=f"image-{seed}.png") for seed in seeds]
    chat.add_user_message(QUESTION, images=images)
    return chat


def test_sdk_an_image_adds_its_tokens(sdk: lms.Client, image_cost: int) -> None:
    model = sdk.llm.model(MODEL_ID)
    tokens = [
        model.respond(sdk_chat(sdk, *seeds), config={"maxTokens": 1}).stats.prompt_tokens_count
        for seeds in ((), (0,))
    ]
    assert tokens[1] is not None and tokens[0] is not None
    assert tokens[1] - tokens[0] == image_cost


def test_sdk_different_images_different_answers(sdk: lms.Client) -> None:
    model = sdk.llm.model(MODEL_ID)
    config = {"temperature": 0.0, "maxTokens": ANSWER_TOKENS}
    answers = [model.respond(sdk_chat(sdk, seed), config=config).content for seed in SEEDS]
    assert some_differ(answers)


def test_sdk_a_model_without_a_projector_refuses(server: Server) -> None:
    with lms.Client(f"127.0.0.1:{server.port}") as client:
        model = client.llm.model(MODEL_ID)
        with pytest.raises(LMStudioServerError, match=NO_VISION):
            model.respond(sdk_chat(client, 0), config={"maxTokens": 1})


def test_js_sdk_images_answer_as_the_chat_route(vision: Server, node_modules: Path) -> None:  # noqa: F811
    """LM Studio's JavaScript SDK: files.prepareImageBase64, then the image in a message."""
    lines = run_script(
        Path(__file__).parent / "js" / "sdk_images.cjs",
        node_modules,
        vision,
        QUESTION=QUESTION,
        MAX_TOKENS=str(ANSWER_TOKENS),
        IMAGES=",".join(base64.b64encode(png(seed)).decode() for seed in SEEDS[:2]),
    )
    prepared = [line for line in lines if line["step"] == "prepared"]
    assert [line["type"] for line in prepared] == ["image", "image"]
    answers = [line for line in lines if line["step"] == "respond"]
    for seed, answer in zip(SEEDS, answers, strict=False):
        body = {
            "model": MODEL_ID,
            "messages": [
                {
                    "role": "user",
                    # The SDK puts a message's images before its text.
                    "content": [
                        {"type": "image_url", "image_url": {"url": png_url(seed)}},
                        {"type": "text", "text": QUESTION},
                    ],
                }
            ],
            "temperature": 0,
            "max_tokens": ANSWER_TOKENS,
        }
        rest = httpx.post(f"{vision.api_url}/chat/completions", json=body, timeout=120).json()
        assert answer["stats"]["promptTokensCount"] == rest["usage"]["prompt_tokens"]
        assert answer["content"] == rest["choices"][0]["message"]["content"]
    assert answers[0]["content"] != answers[1]["content"]
