"""The chat page in a real browser (Debian's Chromium, driven by Playwright) against the real
server and model: streaming, stopping, settings, the rendered prompt, the live log, reloads
and tabs, export and import, branches, errors, the model picker. (Hostile output, the
policy and a phone: test_webui_safety.py; an API key: test_webui_key.py.)"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import MODEL_ID, Server
from tests.webui_browser import (  # noqa: F401 (the *_fixture names are fixtures)
    LogRecords,
    assert_clean,
    browser_fixture,
    current_id,
    new_page,
    open_page,
    page_fixture,
    records_fixture,
    seed_conversation,
    send,
    settings,
    stored,
    wait_for_answers,
    webui_server_fixture,
)

# SmolLM2's end-of-turn token (<|im_end|>); banning it keeps the model talking.
IM_END = "2"


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text)


def busy_slots(server: Server) -> int:
    report = httpx.get(f"{server.base_url}/lmserve/slots").json()
    return sum(slot["busy"] for model in report["models"] for slot in model["slots"])


def generated_tokens(server: Server) -> int:
    report = httpx.get(f"{server.base_url}/lmserve/slots").json()
    return sum(model["engine"]["generated_tokens"] for model in report["models"])


# -- chatting ---------------------------------------------------------------------------------


def test_an_answer_streams_in_from_the_real_model(
    page: Any, webui_server: Server, records: LogRecords
) -> None:
    open_page(page)
    settings(page, max_tokens=24, temperature=0)
    send(page, "Name three colours.")
    # Text shows while the answer is still being generated: it streams.
    page.wait_for_function(
        "() => document.querySelector('.pending .content')?.textContent.length > 0"
    )
    answer = wait_for_answers(page)
    conversation = stored(webui_server, current_id(page))
    message = conversation["messages"][-1]
    output = records.of(message["meta"]["request_id"], "output")
    assert message["role"] == "assistant" and message["content"] == output["output"] != ""
    # What shows is that text, rendered: its words, in order (markdown's marks aside).
    shown = iter(words(answer.locator(".content").inner_text()))
    assert all(word in shown for word in words(output["output"]))
    stats = answer.locator(".stats").inner_text()
    assert "tok/s" in stats and "first token" in stats
    assert f"{output['stats']['completion_tokens']} tokens" in stats
    assert page.locator(".conversation-list li.current").inner_text().startswith("Name three")
    # The live log panel showed the request's records as they came.
    page.click("#toggle-logs")
    log = page.locator("#log-list").inner_text()
    assert "llm.prediction.input" in log and message["meta"]["request_id"] in log
    assert "Connected" in page.inner_text("#log-state")


def test_stop_ends_the_answer_and_frees_the_slot(page: Any, webui_server: Server) -> None:
    open_page(page)
    settings(page, max_tokens=2000, logit_bias=json.dumps({IM_END: -100}))
    send(page, "Tell me a very long story about a lighthouse.")
    page.wait_for_function(
        "() => document.querySelector('.pending .content')?.textContent.length > 20",
        timeout=120_000,
    )
    assert busy_slots(webui_server) == 1
    page.click("#stop")
    deadline = time.monotonic() + 10
    while busy_slots(webui_server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert busy_slots(webui_server) == 0
    answer = wait_for_answers(page)
    assert "stopped" in answer.locator(".stats").inner_text()
    message = stored(webui_server, current_id(page))["messages"][-1]
    assert message["meta"]["stopped"] is True and message["content"]  # what came is kept
    # And the engine generates nothing more.
    generated = generated_tokens(webui_server)
    time.sleep(1.0)
    assert generated_tokens(webui_server) == generated


def test_the_settings_reach_the_model(page: Any, webui_server: Server, records: LogRecords) -> None:
    sent: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: sent.append(r.post_data_json) if r.url.endswith("/chat/completions") else None,
    )
    open_page(page)
    settings(
        page,
        system_prompt="You answer like a pirate.",
        temperature=0.3,
        top_p=0.9,
        top_k=20,
        max_tokens=3,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        repeat_penalty=1.2,
        seed=1234,
        stop="\\n\\n",
        logit_bias=json.dumps({"28": 2.5}),
        stream=False,
    )
    send(page, "Where is the treasure?")
    answer = wait_for_answers(page)
    body = sent[-1]
    assert set(body) == {
        *("model", "messages", "temperature", "top_p", "top_k", "max_tokens", "stream"),
        *("stop", "presence_penalty", "frequency_penalty", "logit_bias", "repeat_penalty"),
        "seed",
    }
    assert body["model"] == MODEL_ID and body["stream"] is False and body["stop"] == ["\n\n"]
    message = stored(webui_server, current_id(page))["messages"][-1]
    record = records.of(message["meta"]["request_id"], "input")
    assert record["prompt"].startswith(
        "<|im_start|>system\nYou answer like a pirate.<|im_end|>\n"
        "<|im_start|>user\nWhere is the treasure?<|im_end|>\n"
    )
    expected = {
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 20,
        "max_tokens": 3,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "repeat_penalty": 1.2,
        "seed": 1234,
        "stop": ["\n\n"],
        "logit_bias": {"28": 2.5},
    }
    assert {name: record["parameters"][name] for name in expected} == expected
    answer.locator("details.prompt summary").click()
    shown = json.loads(answer.locator(".params").inner_text())
    assert {name: shown[name] for name in expected} == expected
    # The settings were kept with the conversation.
    kept = stored(webui_server, current_id(page))["settings"]
    assert kept["system_prompt"] == "You answer like a pirate." and kept["seed"] == 1234
    assert kept["stream"] is False and kept["logit_bias"] == {"28": 2.5}


def test_the_prompt_view_shows_what_the_template_made(
    page: Any, webui_server: Server, records: LogRecords
) -> None:
    open_page(page)
    settings(page, max_tokens=4)
    send(page, "Hello there")
    answer = wait_for_answers(page)
    request_id = stored(webui_server, current_id(page))["messages"][-1]["meta"]["request_id"]
    record = records.of(request_id, "input")
    summary = answer.locator("details.prompt summary")
    assert summary.inner_text() == f"What the model received: {record['prompt_tokens']} tokens"
    prompt = answer.locator(".prompt-text")
    assert not prompt.is_visible()  # collapsed until asked for
    summary.click()
    shown = prompt.inner_text()
    # The page sent no system message: this one is SmolLM2's template's own default.
    assert shown.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert shown.endswith("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n")
    assert shown == record["prompt"]


def test_a_reload_and_another_tab_keep_the_conversation(
    page: Any, browser: Any, webui_server: Server
) -> None:
    open_page(page)
    settings(page, max_tokens=4)
    send(page, "Remember the word lantern.")
    wait_for_answers(page)
    before = page.locator("#messages").inner_text()
    ident = current_id(page)
    page.reload()
    page.wait_for_selector("html[data-ready]")
    page.wait_for_selector(".message.assistant")
    assert current_id(page) == ident and page.locator("#messages").inner_text() == before
    other = new_page(browser, webui_server)
    try:
        open_page(other)
        other.locator(f".conversation-list li[data-id='{ident}'] .open").click()
        other.wait_for_selector(".message.assistant")
        assert "Remember the word lantern." in other.locator("#messages").inner_text()
        assert_clean(other)
    finally:
        other.context.close()


def test_export_then_import(page: Any, webui_server: Server, tmp_path: Path) -> None:
    ident = seed_conversation(webui_server, "Exported", "An answer with **bold** text.")
    open_page(page, f"/#{ident}")
    with page.expect_download() as download:
        page.locator(f".conversation-list li[data-id='{ident}'] .export").click()
    saved = tmp_path / "export.json"
    download.value.save_as(saved)
    exported = json.loads(saved.read_text())
    assert [c["id"] for c in exported["conversations"]] == [ident]
    page.set_input_files("#import-file", str(saved))
    page.wait_for_function(
        "() => document.querySelector('#status').textContent === 'Imported 1 conversation.'"
    )
    copy = current_id(page)
    assert copy != ident
    assert page.locator(".message.assistant .content strong").inner_text() == "bold"
    assert [m["content"] for m in stored(webui_server, copy)["messages"]] == [
        "Hi",
        "An answer with **bold** text.",
    ]
    # A file that is not an export: the server's 400 is shown, nothing is added.
    count = page.locator(".conversation-list li").count()
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "lmserve.conversations", "version": 1, "conversations": [')
    page.set_input_files("#import-file", str(bad))
    page.wait_for_selector("#status.error")
    assert "JSON" in page.inner_text("#status")
    assert page.locator(".conversation-list li").count() == count


def test_regenerate_and_edit_make_branches(page: Any, webui_server: Server) -> None:
    open_page(page)
    settings(page, max_tokens=3)
    send(page, "Say a word.")
    first = wait_for_answers(page).locator(".content").inner_text()
    page.locator(".message.assistant .regenerate").click()
    answer = wait_for_answers(page, 2)
    assert answer.locator(".branch-count").inner_text() == "2/2"
    # The same prompt again: the slot still holds it, and the figures say so.
    figures = re.search(r"prompt (\d+) tokens, (\d+) cached", answer.locator(".stats").inner_text())
    assert figures and 0 < int(figures[2]) <= int(figures[1])
    answer.locator(".branch-prev").click()
    page.wait_for_function(
        "() => document.querySelector('.message.assistant .branch-count')?.textContent === '1/2'"
    )
    assert page.locator(".message.assistant .content").inner_text() == first
    page.locator(".message.user .edit").click()
    page.locator(".edit-box textarea").fill("Say another word.")
    page.locator(".save-edit").click()
    wait_for_answers(page, 3)
    page.wait_for_function(
        "() => document.querySelector('.message.user .branch-count')?.textContent === '2/2'"
    )
    assert page.locator(".message.user .content").inner_text() == "Say another word."
    conversation = stored(webui_server, current_id(page))
    roles = [m["role"] for m in conversation["messages"]]
    assert roles == ["user", "assistant", "assistant", "user", "assistant"]
    assert conversation["current_leaf"] == conversation["messages"][-1]["id"]


def test_a_refused_request_is_shown_and_the_page_stays_usable(
    page: Any, webui_server: Server
) -> None:
    bad_tools = [{"type": "function", "function": {"name": "not a valid name!"}}]
    open_page(page)
    settings(page, tools=json.dumps(bad_tools))
    send(page, "Use a tool.")
    wait_for_answers(page)
    failed = page.locator(".message.error-message .stats").inner_text()
    assert "tools[0].function.name" in failed
    assert "tools[0].function.name" in page.inner_text("#status.error")
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    messages = stored(webui_server, current_id(page))["messages"]
    assert [m["role"] for m in messages] == ["user"]  # the failure is not kept as an answer


def test_the_model_picker_unloads_and_loads_just_in_time(page: Any, webui_server: Server) -> None:
    """Unload the model from the models panel; the picker then offers it to load on use, and
    a message loads it just in time. (Last: the other tests want the model loaded.)"""
    open_page(page)
    page.click("#toggle-settings")
    page.get_by_role("button", name=f"Unload {MODEL_ID}").click()
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('Unloaded')"
    )
    assert httpx.get(f"{webui_server.base_url}/lmserve/slots").json()["models"] == []
    assert page.locator("#model-list").inner_text().count("downloaded, not loaded") == 1
    assert "(loads on use)" in page.locator("#model-select option:checked").inner_text()
    page.fill("#max_tokens", "3")
    page.click("#toggle-settings")
    page.wait_for_timeout(500)
    send(page, "Hi")
    wait_for_answers(page)
    assert page.locator(".message.assistant .role").inner_text() == MODEL_ID
    page.wait_for_function(
        "() => document.querySelector('#model-select option:checked')?.textContent.startsWith('●')"
    )
    page.click("#toggle-settings")
    assert "just in time" in page.locator("#model-list").inner_text()
