"""Chat templates: the model's own Jinja template from its GGUF, rendered in a sandbox.

Templates come from model files downloaded off the internet, so they are untrusted code:
they run in Jinja's ``ImmutableSandboxedEnvironment`` (plain ``jinja2.Environment`` allowed
remote code execution in llama-cpp-python, CVE-2024-34359).  The environment follows Hugging
Face's ``apply_chat_template`` conventions so that templates written for transformers render the
same here: ``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``tojson``, ``strftime_now``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when a model ships no template: ChatML, the most common format, as llama.cpp also does.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Where a ChatML turn ends.  A model without a template of its own may not have these as
# special tokens; it ends its turn by writing them as text, which must then stop it.
CHATML_TURN_MARKERS = ("<|im_end|>", "<|im_start|>")


class TemplateRenderError(ValueError):
    """The template rejected the conversation or failed to render it."""


class _TemplateRaised(Exception):
    """Raised by a template's own ``raise_exception`` call."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
        autoescape=False,
        undefined=jinja2.Undefined,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


class ChatTemplate:
    """A compiled chat template plus the special-token strings it may refer to."""

    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = "") -> None:
        self.is_fallback = not source
        self.source = source or CHATML_TEMPLATE
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _compile(self.source)
        except TemplateError as exc:
            # A template that does not even compile is as good as none.
            self.is_fallback = True
            self.source = CHATML_TEMPLATE
            self._template = _compile(self.source)
            self.compile_error: str | None = str(exc)
        else:
            self.compile_error = None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        **extra: Any,
    ) -> str:
        """Render ``messages`` (dicts with ``role`` and ``content``) into the prompt text.

        With ``continue_final_message`` the last message (an assistant's) is left open, so
        that the model goes on writing it: an assistant "prefill".
        """
        if continue_final_message:
            return self._render_open(messages, extra)
        return self._render(messages, add_generation_prompt, extra)

    def _render_open(self, messages: Sequence[Mapping[str, Any]], extra: dict[str, Any]) -> str:
        final = str(messages[-1].get("content") or "")
        if final.strip():
            # The template's own rendering of the whole conversation, cut right after the
            # final text: whatever the template puts around an assistant turn stays as it is.
            whole = self._render(messages, False, extra)
            end = whole.rfind(final)
            if end >= 0:
                return whole[: end + len(final)]
        # The template changed the text (or there is none): the turn as a new answer's start.
        return self._render(messages[:-1], True, extra) + final

    def _render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool, extra: dict
    ) -> str:
        context = {
            "messages": [dict(message) for message in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **{key: value for key, value in extra.items() if value is not None},
        }
        try:
            return self._template.render(**context)
        except _TemplateRaised as exc:
            raise TemplateRenderError(
                f"The model's chat template rejected the messages: {exc}"
            ) from None
        except SecurityError as exc:
            raise TemplateRenderError(
                f"The chat template tried an unsafe operation: {exc}"
            ) from None
        except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise TemplateRenderError(f"The chat template failed to render: {exc}") from None
