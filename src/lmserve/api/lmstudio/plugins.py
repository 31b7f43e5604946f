"""LM Studio plugins in ``/api/v1/chat``: a request's ``integrations`` that name a plugin
(``owner/name``) by id.

The plugin's tools provider offers its tools for the turn (:class:`PluginUse`, run by the
server as MCP tools are), and its prompt preprocessor rewrites the user's input before the
model sees it, as LM Studio runs an enabled plugin's preprocessor on each new message.  Each
plugin preprocesses in the order the request names them; one that fails, or gives no answer
in time, fails the request (424) with its reason.
"""

from __future__ import annotations

from typing import Any

from lmserve.api.common.protocol import ChatMessage, ContentPart, TextContentPart, parts_content
from lmserve.plugins import Plugin, Plugins


def _text_of(content: str | list[ContentPart] | None) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content or [] if isinstance(part, TextContentPart))


def sdk_message(message: ChatMessage) -> dict[str, Any]:
    """A chat message as LM Studio's SDKs write one (its text; images are not sent)."""
    return {"role": message.role, "content": [{"type": "text", "text": _text_of(message.content)}]}


def _replace_text(content: str | list[ContentPart], processed: dict[str, Any]) -> Any:
    """``content`` with its text as the plugin rewrote it (its text parts joined as the SDKs'
    ``getText()`` joins them); its images stay where they were."""
    parts = processed.get("content")
    text = " ".join(
        str(part.get("text", ""))
        for part in (parts if isinstance(parts, list) else [])
        if isinstance(part, dict) and part.get("type") == "text"
    )
    if isinstance(content, str):
        return text
    images = [part for part in content if not isinstance(part, TextContentPart)]
    return parts_content([TextContentPart(type="text", text=text), *images])


async def preprocess(
    registry: Plugins,
    plugins: list[Plugin],
    earlier: list[ChatMessage],
    content: str | list[ContentPart],
    model: str | None,
) -> str | list[ContentPart]:
    """The user's input as the plugins' prompt preprocessors leave it."""
    for plugin in plugins:
        message = sdk_message(ChatMessage(role="user", content=content))
        history = {"messages": [*(sdk_message(m) for m in earlier), message]}
        pci, token = registry.open_context(history, model)
        try:
            processed = await plugin.preprocess(message, context=(pci, token), enabled=plugins)
        finally:
            registry.close_context(pci)
        if processed is not None:
            content = _replace_text(content, processed)
    return content
