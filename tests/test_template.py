"""Chat templates render Hugging Face style, in a sandbox."""

from __future__ import annotations

import pytest

from lmserve.engine.template import ChatTemplate, TemplateRenderError

MESSAGES = [{"role": "user", "content": "hi"}]


def test_chatml_fallback_when_no_template() -> None:
    template = ChatTemplate(None)
    assert template.is_fallback
    assert template.render(MESSAGES) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_hf_conventions_available() -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}{{ m['content'] | tojson }}{% endfor %}"
        "{{ strftime_now('%Y') | length }}{% if add_generation_prompt %}>{% endif %}"
    )
    assert ChatTemplate(source, bos_token="<s>").render(MESSAGES) == '<s>"hi"4>'


def test_raise_exception_becomes_a_render_error() -> None:
    source = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('need system') }}{% endif %}"
    )
    with pytest.raises(TemplateRenderError, match="need system"):
        ChatTemplate(source).render(MESSAGES)


@pytest.mark.parametrize(
    "payload",
    [
        # CVE-2024-34359: reach os through the class hierarchy.
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{% set x = messages.append({'role': 'x'}) %}",
    ],
)
def test_sandbox_blocks_escapes(payload: str) -> None:
    with pytest.raises(TemplateRenderError):
        ChatTemplate(payload).render(MESSAGES)


def test_broken_template_falls_back() -> None:
    template = ChatTemplate("{% for %}")
    assert template.is_fallback
    assert template.compile_error
