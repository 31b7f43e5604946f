"""Assistant prefill: a conversation that ends with an assistant's text is continued.

Anthropic's Messages API always continues a final assistant turn; chat completions do when
asked with vLLM's ``continue_final_message``, and otherwise answer in a new turn, as OpenAI's
API does.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest
from openai import OpenAI

from lmserve.engine.template import ChatTemplate
from tests.conftest import MODEL_ID, Server
from tests.helpers import prompts

PREFILL = "Here are three colours:\n1."
CONVERSATION = [
    {"role": "user", "content": "Name three colours."},
    {"role": "assistant", "content": PREFILL},
]
GREEDY = {"temperature": 0, "top_k": 1}


@pytest.fixture()
def claude(server: Server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url, api_key="x", max_retries=0) as sdk:
        yield sdk


def test_chat_continues_the_final_message_when_asked(client: OpenAI, server: Server) -> None:
    with prompts(server) as seen:
        continued = client.chat.completions.create(
            model=MODEL_ID,
            messages=CONVERSATION,
            max_tokens=12,
            temperature=0,
            extra_body={"continue_final_message": True},
        )
        answered = client.chat.completions.create(
            model=MODEL_ID, messages=CONVERSATION, max_tokens=1, temperature=0
        )
    open_turn, new_turn = seen[-2:]
    # Left open: no end of turn after the prefill, and no new assistant turn.
    assert open_turn.endswith("<|im_start|>assistant\n" + PREFILL)
    assert new_turn.endswith(PREFILL + "<|im_end|>\n<|im_start|>assistant\n")
    text = continued.choices[0].message.content
    assert text and not text.lstrip().startswith("Here are")  # the continuation alone
    assert answered.choices[0].message.content is not None


def test_chat_continue_needs_a_final_assistant_message(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_ID,
            messages=CONVERSATION[:1],
            max_tokens=1,
            extra_body={"continue_final_message": True},
        )
    assert caught.value.body["param"] == "continue_final_message"


def test_anthropic_continues_a_final_assistant_turn(
    claude: anthropic.Anthropic, server: Server
) -> None:
    with prompts(server) as seen:
        message = claude.messages.create(
            model=MODEL_ID, max_tokens=12, messages=CONVERSATION, extra_body=GREEDY
        )
    assert seen[-1].endswith("<|im_start|>assistant\n" + PREFILL)
    [block] = message.content
    assert block.type == "text" and not block.text.lstrip().startswith("Here are")


def test_anthropic_refuses_a_prefill_ending_in_whitespace(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model=MODEL_ID,
            max_tokens=5,
            messages=[CONVERSATION[0], {"role": "assistant", "content": PREFILL + " "}],
        )
    assert "trailing whitespace" in caught.value.message
    assert caught.value.body["error"]["type"] == "invalid_request_error"


# -- rendering, for templates that change what they are given ---------------------------------


def test_a_template_that_rewrites_content_still_leaves_the_turn_open() -> None:
    upper = ChatTemplate(
        "{% for m in messages %}<{{ m.role }}>{{ m.content | upper }}</{{ m.role }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    rendered = upper.render(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Well,"}],
        continue_final_message=True,
    )
    # The text as sent, after the template's own start of an assistant turn.
    assert rendered == "<user>HI</user><assistant>Well,"


def test_an_empty_prefill_is_the_start_of_an_answer() -> None:
    chatml = ChatTemplate(None)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    assert chatml.render(messages, continue_final_message=True) == chatml.render(messages[:1])
