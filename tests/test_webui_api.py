"""The chat page's HTTP side, in process (no model needed): the page and its headers, what
needs a key, the Host check, --no-webui, and the vendored libraries' checksums. (The
conversations API: test_webui_conversations.py.)"""

from __future__ import annotations

import hashlib
import json
import re
import runpy
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from lmserve.api.webui.assets import Assets
from lmserve.cli.serve import serve, settings_from_options
from lmserve.cli.server import _serve_arguments
from tests.webui_app import HTML, LOOPBACK, client_fixture, make_app  # noqa: F401 (a fixture)

KEY = "sk-webui-test-4d1b"
ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "src/lmserve/api/webui/static"


# -- the page ---------------------------------------------------------------------------------


def test_the_page_has_a_strict_policy(client: TestClient) -> None:
    page = client.get("/", headers=HTML)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/webui/js/app.js">' in page.text
    policy = dict(
        [*directive.split(" ", 1), ""][:2]
        for directive in page.headers["content-security-policy"].split("; ")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == policy["style-src"] == "'self'"  # no 'unsafe-inline'
    assert policy["img-src"] == "'self' data:"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == policy["base-uri"] == policy["form-action"] == "'none'"
    assert policy["require-trusted-types-for"] == "'script'"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    # No inline script or style anywhere in the page: the policy would refuse them.
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)
    assert "style=" not in page.text and "<style" not in page.text
    assert not re.search(r"\son[a-z]+=", page.text)


def test_the_page_files_are_served_with_their_types(client: TestClient) -> None:
    script = client.get("/webui/js/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")  # modules need it
    assert script.headers["x-content-type-options"] == "nosniff"
    assert (
        client.get("/webui/vendor/markdown-it.min.mjs")
        .headers["content-type"]
        .startswith("text/javascript")
    )
    assert client.get("/webui/app.css").headers["content-type"].startswith("text/css")
    again = client.get("/webui/js/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    for missing in ("/webui/nope.js", "/webui/../router.py", "/webui/%2e%2e/store.py"):
        assert client.get(missing).status_code == 404


def test_every_module_the_page_imports_is_shipped(client: TestClient) -> None:
    """Follow the imports from app.js: a file missing from the package data would be a blank
    page."""
    assets = Assets.from_package()
    seen, queue = set(), ["js/app.js"]
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        text = assets.files[name].body.decode()
        for target in re.findall(r"""^import .*?from ['"](\.{1,2}/[^'"]+)['"]""", text, re.M):
            queue.append(str(Path(name).parent.joinpath(target)).replace("\\", "/"))
            queue[-1] = re.sub(r"[^/]+/\.\./", "", queue[-1])
    assert {"js/markdown.js", "vendor/purify.es.mjs", "vendor/highlight/core.min.js"} <= seen
    for name in seen:
        assert client.get(f"/webui/{name}").status_code == 200, name


def test_clients_that_probe_the_root_still_get_json(client: TestClient) -> None:
    assert client.head("/").status_code == 200  # Claude Code's first request
    assert client.get("/").json()["name"] == "lmserve"
    assert client.get("/", headers={"Accept": "*/*"}).json()["name"] == "lmserve"
    assert client.head("/", headers=HTML).status_code == 200


def test_no_webui_turns_the_page_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(tmp_path, monkeypatch, webui=False, api_keys=(KEY,))
    with TestClient(app, base_url=LOOPBACK) as off:
        assert off.get("/webui/js/app.js").status_code == 401  # not public when off
        auth = {"Authorization": f"Bearer {KEY}"}
        assert off.get("/webui/js/app.js", headers=auth).status_code == 404
        root = off.get("/", headers={**HTML, **auth})
        assert root.json()["name"] == "lmserve"
        assert off.get("/lmserve/conversations", headers=auth).status_code == 200
    # The flag, as `lmserve serve` and `lmserve server start` read it.
    assert settings_from_options(serve.make_context("serve", []).params).webui is True
    off_flag = serve.make_context("serve", ["--no-webui"]).params
    assert settings_from_options(off_flag).webui is False
    assert "--no-webui" in _serve_arguments(off_flag)  # `server start` passes it on


def test_the_page_loads_without_a_key_and_nothing_else_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(make_app(tmp_path, monkeypatch, api_keys=(KEY,)), base_url=LOOPBACK) as keyed:
        assert keyed.get("/", headers=HTML).status_code == 200
        assert keyed.get("/webui/js/app.js").status_code == 200
        # A probe of the root is no page: it needs the key, as before the page existed.
        assert keyed.head("/").status_code == 401
        assert keyed.head("/", headers={"x-api-key": KEY}).status_code == 200
        for method, path in (
            ("GET", "/lmserve/conversations"),
            ("POST", "/lmserve/conversations"),
            ("POST", "/lmserve/conversations/import"),
            ("GET", "/lmserve/log/stream"),
            ("POST", "/webui/js/app.js"),
        ):
            assert keyed.request(method, path, json={}).status_code == 401, path
        listed = keyed.get("/lmserve/conversations", headers={"Authorization": f"Bearer {KEY}"})
        assert listed.status_code == 200


def test_the_host_check_covers_the_page_and_its_api(client: TestClient) -> None:
    for path in ("/", "/webui/js/app.js", "/lmserve/conversations"):
        response = client.get(path, headers={**HTML, "Host": "rebound.example"})
        assert response.status_code == 403 and response.json()["error"]["code"] == "invalid_host"


# -- the vendored libraries -------------------------------------------------------------------


def test_the_vendored_files_match_their_checksums() -> None:
    vendor = STATIC / "vendor"
    listed = {}
    for line in (vendor / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    on_disk = {
        str(path.relative_to(vendor))
        for path in vendor.rglob("*")
        if path.is_file() and path.name != "SHA256SUMS"
    }
    assert set(listed) == on_disk  # nothing unlisted, nothing missing
    for name, digest in listed.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    versions = json.loads((vendor / "versions.json").read_text())
    script = runpy.run_path(str(ROOT / "scripts/vendor_webui.py"))  # its main() is not run
    pinned = {(p.name, p.version, p.integrity) for p in script["PACKAGES"]}
    assert {(v["name"], v["version"], v["integrity"]) for v in versions} == pinned
    assert {name for name, _, _ in pinned} == {
        "markdown-it",
        "dompurify",
        "@highlightjs/cdn-assets",
    }
    for version in versions:
        assert version["licenses"] and all(name in listed for name in version["licenses"])
