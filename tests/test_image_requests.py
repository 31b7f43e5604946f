"""Images in each surface's requests, as far as the chat request they become (no model).

Every surface turns an image into chat's ``image_url`` part, in its place among the message's
text; the common layer (``api/common/images.py``) reads it.  What a surface refuses by itself
(another API's files, images where that API takes none) is checked here too, through the
in-process app and in the surface's own error shape.  The model's side is
``test_images_surfaces.py``.
"""

from __future__ import annotations

import ast
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import TypeAdapter
from starlette.testclient import TestClient

from lmserve.api.anthropic.protocol import MessagesRequest
from lmserve.api.anthropic.service import chat_request as anthropic_chat
from lmserve.api.app import create_app
from lmserve.api.common.errors import InvalidRequestError
from lmserve.api.common.protocol import ChatMessage, ImageContentPart, TextContentPart
from lmserve.api.lmstudio.protocol import NativeChatRequest
from lmserve.api.lmstudio.service import ChatThreads, NativeChatTurn
from lmserve.api.lmstudio_ws.files import FileStore, image_media_type
from lmserve.api.lmstudio_ws.history import chat_messages as sdk_messages
from lmserve.api.lmstudio_ws.protocol import ChatHistory, UploadFileParameter
from lmserve.api.lmstudio_ws.system import upload_file_base64
from lmserve.api.responses.items import chat_messages as responses_messages
from lmserve.api.responses.items import public_item
from lmserve.api.responses.protocol import InputItem
from lmserve.config import Settings
from lmserve.models.manager import ModelManager

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 24  # a PNG's signature: enough to be named one here
PNG_URL = f"data:image/png;base64,{base64.b64encode(PNG).decode()}"
OTHER_URL = "data:image/jpeg;base64,/9j/4AAQ"

_items = TypeAdapter(list[InputItem])


def shape(content: Any) -> list[tuple[str, str]]:
    """A message's content as (kind, text or URL) pairs, in order."""
    if isinstance(content, str):
        return [("text", content)]
    return [
        ("text", part.text) if isinstance(part, TextContentPart) else ("image", part.url)
        for part in content
    ]


@pytest.fixture()
def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The in-process app with no model: a request refused before any model is read."""
    monkeypatch.setenv("LMSERVE_HOME", str(tmp_path))
    settings = Settings()
    app = create_app(ModelManager(tmp_path / "models", settings), settings=settings)
    with TestClient(app, base_url="http://127.0.0.1:1234") as client:
        yield client


# -- Anthropic ---------------------------------------------------------------------------------


def anthropic(*messages: dict[str, Any]) -> list[ChatMessage]:
    body = {"model": "m", "max_tokens": 5, "messages": list(messages)}
    return anthropic_chat(MessagesRequest.model_validate(body)).messages


def base64_image(data: str = "iVBORw0K", media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def test_anthropic_images_keep_their_place_among_the_text() -> None:
    url_image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    [user] = anthropic(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "First"},
                base64_image(),
                {"type": "text", "text": "then"},
                url_image,
            ],
        }
    )
    assert shape(user.content) == [
        ("text", "First"),
        ("image", "data:image/png;base64,iVBORw0K"),
        ("text", "then"),
        ("image", "https://example.com/a.png"),
    ]


def test_anthropic_text_only_content_stays_one_string() -> None:
    [user] = anthropic(
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    )
    assert user.content == "a\nb"


def test_anthropic_tool_results_carry_images() -> None:
    call = {"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [base64_image("R0lG", "image/gif"), {"type": "text", "text": "the screen"}],
    }
    failed = {
        "type": "tool_result",
        "tool_use_id": "toolu_2",
        "is_error": True,
        "content": [base64_image("UklG", "image/webp")],
    }
    _, _, tool, second, user = anthropic(
        {"role": "user", "content": "Look"},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result, failed, {"type": "text", "text": "What is it?"}]},
    )
    assert (tool.role, tool.tool_call_id) == ("tool", "toolu_1")
    assert shape(tool.content) == [
        ("image", "data:image/gif;base64,R0lG"),
        ("text", "the screen"),
    ]
    assert shape(second.content) == [("text", "Error:"), ("image", "data:image/webp;base64,UklG")]
    assert user.content == "What is it?"


@pytest.mark.parametrize(
    ("message", "param", "words"),
    [
        (
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}],
            },
            "messages[0].content[0].source",
            "Files API",
        ),
        (
            {"role": "assistant", "content": [base64_image()]},
            "messages[0].content[0]",
            "user messages",
        ),
        (
            {"role": "user", "content": [{"type": "document", "source": {}}]},
            "messages[0].content[0]",
            "Document",
        ),
    ],
)
def test_anthropic_refusals_name_the_block(
    message: dict[str, Any], param: str, words: str, app_client: TestClient
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        anthropic(message)
    assert refused.value.param == param and words in refused.value.message
    # Over HTTP, before any model is looked for: a 400 in Anthropic's shape.
    messages = [message] if message["role"] == "user" else [{"role": "user", "content": "Hi"}]
    messages += [] if message["role"] == "user" else [message]
    body = {"model": "m", "max_tokens": 5, "messages": messages}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        answer = app_client.post(path, json=body)
        assert answer.status_code == 400, answer.text
        error = answer.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert words in error["error"]["message"]


def test_anthropic_takes_only_its_four_media_types(app_client: TestClient) -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": [base64_image(media_type="image/tiff")]}],
    }
    answer = app_client.post("/v1/messages", json=body)
    assert answer.status_code == 400 and "media_type" in answer.json()["error"]["message"]


# -- Responses ---------------------------------------------------------------------------------


def items(*raw: dict[str, Any]) -> list[InputItem]:
    return _items.validate_python(list(raw))


def image_message(*parts: dict[str, Any], role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": list(parts)}


def test_responses_input_images_keep_their_place_among_the_text() -> None:
    [user] = responses_messages(
        items(
            image_message(
                {"type": "input_image", "image_url": PNG_URL, "detail": "low"},
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "https://example.com/b.jpg"},
            )
        ),
        None,
    )
    assert shape(user.content) == [
        ("image", PNG_URL),
        ("text", "What is this?"),
        ("image", "https://example.com/b.jpg"),
    ]


def test_responses_function_call_outputs_carry_images() -> None:
    conversation = items(
        {"role": "user", "content": "Take a screenshot"},
        {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [{"type": "input_image", "image_url": PNG_URL}],
        },
    )
    *_, tool = responses_messages(conversation, None)
    assert tool.role == "tool" and shape(tool.content) == [("image", PNG_URL)]


def test_a_stored_conversation_gives_its_image_to_the_next_turn() -> None:
    """``previous_response_id`` continues the stored input items; the image is one of them."""
    first = items(
        image_message(
            {"type": "input_text", "text": "Remember this"},
            {"type": "input_image", "image_url": PNG_URL},
        )
    )
    answer = items({"role": "assistant", "content": [{"type": "output_text", "text": "OK"}]})
    history = [*first, *answer]  # what ResponseTurn.stored keeps as the conversation
    later = items({"role": "user", "content": "What was it?"})
    user, assistant, question = responses_messages([*history, *later], None, len(history))
    assert shape(user.content) == [("text", "Remember this"), ("image", PNG_URL)]
    assert (assistant.content, question.content) == ("OK", "What was it?")
    listed = public_item(first[0])["content"]
    assert listed[1]["type"] == "input_image" and listed[1]["image_url"] == PNG_URL


@pytest.mark.parametrize(
    ("part", "role", "param", "words"),
    [
        (
            {"type": "input_image", "file_id": "file-1"},
            "user",
            "input[0].content[0].file_id",
            "Files",
        ),
        ({"type": "input_image"}, "user", "input[0].content[0]", "image_url"),
        ({"type": "input_image", "image_url": PNG_URL}, "system", "input[0].content[0]", "user"),
        ({"type": "input_file", "file_id": "file-1"}, "user", "input[0].content[0]", "File"),
    ],
)
def test_responses_refusals_name_the_part(
    part: dict[str, Any], role: str, param: str, words: str, app_client: TestClient
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        responses_messages(items(image_message(part, role=role)), None)
    assert refused.value.param == param and words in refused.value.message
    body = {"model": "m", "input": [image_message(part, role=role)]}
    answer = app_client.post("/v1/responses", json=body)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param


# -- LM Studio's /api/v1/chat ------------------------------------------------------------------


def test_native_chat_input_items_are_one_user_message_in_order() -> None:
    body = NativeChatRequest.model_validate(
        {
            "input": [
                {"type": "message", "content": "Compare"},
                {"type": "image", "data_url": PNG_URL},
                {"type": "image", "data_url": OTHER_URL},
            ]
        }
    )
    user = NativeChatTurn(body, None).chat_request().messages[-1]
    assert shape(user.content) == [("text", "Compare"), ("image", PNG_URL), ("image", OTHER_URL)]
    plain = NativeChatRequest.model_validate({"input": "Hi"})
    assert NativeChatTurn(plain, None).chat_request().messages[-1].content == "Hi"


def test_the_native_chat_thread_keeps_the_image() -> None:
    threads = ChatThreads()
    image = ImageContentPart.of(PNG_URL)
    earlier = [
        ChatMessage(role="user", content=[TextContentPart(type="text", text="See"), image]),
        ChatMessage(role="assistant", content="Seen."),
    ]
    threads.put("resp_1", earlier)
    body = NativeChatRequest.model_validate({"input": "Again?", "previous_response_id": "resp_1"})
    turn = NativeChatTurn(body, threads)
    user, _, again = turn.chat_request().messages
    assert shape(user.content) == [("text", "See"), ("image", PNG_URL)]
    assert again.content == "Again?"
    assert turn.messages[0] is not None and shape(turn.messages[0].content)[1][0] == "image"


@pytest.mark.parametrize(
    ("value", "param"),
    [("", "input"), ([], "input"), ([{"type": "image"}], "input[0].image.data_url")],
)
def test_native_chat_bad_input_is_named(value: Any, param: str, app_client: TestClient) -> None:
    answer = app_client.post("/api/v1/chat", json={"model": "m", "input": value})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param


# -- LM Studio's SDK protocol ------------------------------------------------------------------


def test_the_file_store_names_images_and_forgets_the_oldest() -> None:
    store = FileStore(capacity=100)
    png = store.add("a.png", PNG)
    assert (png.file_type, png.data_url) == ("image", PNG_URL)
    assert store.add("notes.txt", b"plain words").file_type == "text/plain"
    assert store.add("doc.pdf", b"%PDF-1.7").file_type == "application/pdf"
    assert store.add("x.bin", b"\xff\xfe\x00").file_type == "unknown"
    assert store.get(png.identifier) is png  # the most recently used now
    store.add("big", b"y" * 60)  # over 100 bytes in all: the least recently used go
    assert store.get(png.identifier) is png
    with pytest.raises(Exception, match="keeps 100 bytes"):
        store.add("huge", b"z" * 101)


@pytest.mark.parametrize(
    ("head", "media_type"),
    [
        (b"\xff\xd8\xff\xe0", "image/jpeg"),
        (b"GIF89a", "image/gif"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
        (b"BM\0\0", "image/bmp"),
        (b"<svg", None),
    ],
)
def test_image_formats_are_known_by_their_first_bytes(head: bytes, media_type: str | None) -> None:
    assert image_media_type(head) == media_type


async def test_upload_answers_what_the_sdks_file_handle_needs() -> None:
    store = FileStore()
    ctx = SimpleNamespace(files=store)
    param = UploadFileParameter(name="pixel.png", contentBase64=base64.b64encode(PNG).decode())
    answer = await upload_file_base64(ctx, param)  # type: ignore[arg-type]
    assert answer["fileType"] == "image" and answer["sizeBytes"] == len(PNG)
    assert store.get(answer["identifier"]) is not None
    with pytest.raises(Exception, match="not base64"):
        await upload_file_base64(ctx, UploadFileParameter(name="x", contentBase64="%%%"))  # type: ignore[arg-type]


def history(*messages: dict[str, Any]) -> ChatHistory:
    return ChatHistory.model_validate({"messages": list(messages)})


def file_part(identifier: str, name: str = "pixel.png") -> dict[str, Any]:
    return {"type": "file", "name": name, "identifier": identifier, "fileType": "image"}


def test_history_file_parts_become_images_in_order() -> None:
    store = FileStore()
    stored = store.add("pixel.png", PNG)
    [user] = sdk_messages(
        history(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    file_part(stored.identifier),
                    {"type": "text", "text": "briefly"},
                ],
            }
        ),
        store,
    )
    assert shape(user.content) == [("text", "Describe"), ("image", PNG_URL), ("text", "briefly")]
    # Rendering a template only (applyPromptTemplate) leaves files out, as before.
    [text_only] = sdk_messages(
        history({"role": "user", "content": [{"type": "text", "text": "x"}, file_part("nope")]}),
        store,
        skip_files=True,
    )
    assert text_only.content == "x"


def test_history_files_that_cannot_be_read_are_refused() -> None:
    store = FileStore()
    document = store.add("notes.txt", b"words")
    image = store.add("pixel.png", PNG)
    cases = [
        ({"role": "user", "content": [file_part("file-unknown")]}, "file_not_found", "again"),
        ({"role": "user", "content": [file_part(document.identifier)]}, None, "only images"),
        ({"role": "assistant", "content": [file_part(image.identifier)]}, None, "user messages"),
    ]
    for message, code, words in cases:
        with pytest.raises(InvalidRequestError) as refused:
            sdk_messages(history(message), store)
        assert words in refused.value.message
        assert refused.value.param == "history.messages[0].content[0]"
        if code is not None:
            assert refused.value.code == code


def test_the_sdk_protocol_uploads_and_refuses_an_unknown_file(app_client: TestClient) -> None:
    """Over the WebSocket, as the SDKs send it: the upload's answer, then a prediction that
    names a file the server does not keep gets an error on its channel."""
    auth = {"authVersion": 1, "clientIdentifier": "tests", "clientPasskey": "x"}
    with app_client.websocket_connect("ws://127.0.0.1:1234/files") as files:
        files.send_json(auth)
        assert files.receive_json() == {"success": True}
        content = base64.b64encode(PNG).decode()
        files.send_json(
            {
                "type": "rpcCall",
                "endpoint": "uploadFileBase64",
                "callId": 1,
                "parameter": {"name": "pixel.png", "contentBase64": content},
            }
        )
        answer = files.receive_json()
        assert answer["type"] == "rpcResult" and answer["callId"] == 1
        assert answer["result"]["fileType"] == "image"
        assert answer["result"]["sizeBytes"] == len(PNG)
        files.send_json(
            {
                "type": "rpcCall",
                "endpoint": "getLocalFileAbsolutePath",
                "callId": 2,
                "parameter": {"fileName": "pixel.png"},
            }
        )
        assert files.receive_json()["type"] == "rpcError"
    with app_client.websocket_connect("ws://127.0.0.1:1234/llm") as llm:
        llm.send_json(auth)
        assert llm.receive_json() == {"success": True}
        message = {"role": "user", "content": [file_part("file-gone")]}
        llm.send_json(
            {
                "type": "channelCreate",
                "endpoint": "predict",
                "channelId": 1,
                "creationParameter": {
                    "modelSpecifier": {"type": "query", "query": {"identifier": "m"}},
                    "history": {"messages": [message]},
                },
            }
        )
        error = llm.receive_json()
        assert error["type"] == "channelError" and "file-gone" in error["error"]["title"]
        assert error["error"]["errorData"]["code"] == "file_not_found"


# -- the packages' own imports -------------------------------------------------------------------


@pytest.mark.parametrize("surface", ["anthropic", "responses", "lmstudio"])
def test_events_never_import_their_service(surface: str) -> None:
    source = Path(__file__).parents[1] / "src" / "lmserve" / "api" / surface / "events.py"
    imported = [
        node.module
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.ImportFrom)
    ]
    assert f"lmserve.api.{surface}.service" not in imported, json.dumps(imported)
