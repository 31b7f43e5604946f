#!/usr/bin/env python3
"""Fetch the chat page's browser libraries from the npm registry into the package.

A dev script, run by hand when a pin below changes: nothing is fetched at install or test
time, and the page needs no build step. Each package is pinned by its version and by the
sha512 ``integrity`` the registry published for its tarball, checked here before anything is
unpacked. The files are written as they are in the tarball (no minifying, no patching), into
``src/lmserve/api/webui/static/vendor/``, with:

- ``licenses/<package>/...``: each package's licence files;
- ``versions.json``: package, version, tarball and integrity, and which file came from where;
- ``SHA256SUMS``: the sha256 of every file written (``sha256sum -c`` reads it), which
  ``tests/test_webui_api.py`` checks against the files in the package.

Usage: ``python scripts/vendor_webui.py`` (``NPM_CONFIG_REGISTRY`` names another registry).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "src/lmserve/api/webui/static/vendor"
REGISTRY = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
# highlight.js core does nothing by itself: each language is a module we register.
LANGUAGES = (
    *("bash", "c", "cpp", "css", "diff", "go", "java", "javascript", "json", "markdown"),
    *("plaintext", "python", "rust", "shell", "sql", "typescript", "xml", "yaml"),
)


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # the registry's dist.integrity for this version's tarball
    files: dict[str, str]  # path in the tarball (under package/) -> path under vendor/
    licenses: tuple[str, ...] = ("LICENSE",)

    @property
    def tarball(self) -> str:
        base = self.name.rsplit("/", 1)[-1]
        return f"{REGISTRY}/{self.name}/-/{base}-{self.version}.tgz"


PACKAGES = (
    Package(
        "markdown-it",
        "15.0.3",
        "sha512-+Az7Ojz3iRGu8KYMvJ6xVhvrxP3eE+vEtJX75Ow88XBpcQNV/0lGX5ZynIIBftREo4DC2jsveAMDaeltmm8QvQ==",
        {"dist/browser/markdown-it.esm.min.mjs": "markdown-it.min.mjs"},
    ),
    Package(
        "dompurify",
        "3.5.0",
        "sha512-LYC0ZkE8P1V42JsRYTwMdme/2ET8SpOc5AA2eOFjP/IadvRd2fwiT4TVz5vkfy0XUx12aS2UaRkTnfVPNOv9vw==",
        {"dist/purify.es.mjs": "purify.es.mjs"},
        licenses=("LICENSE", "LICENSE-MPL"),  # Apache-2.0 or MPL-2.0, at the user's choice
    ),
    Package(
        "@highlightjs/cdn-assets",  # highlight.js's own browser build, as ES modules
        "11.12.0",
        "sha512-KvOKXODaiFmId9xaq3xc5xCL66wVLUuOngDbO9B/kewbFTqdGbn2nJxNhN3H5R1cgDTVj6R8vH0zgiNDEGjpDw==",
        {
            "es/core.min.js": "highlight/core.min.js",
            **{
                f"es/languages/{language}.min.js": f"highlight/languages/{language}.min.js"
                for language in LANGUAGES
            },
        },
    ),
)


def fetch(package: Package) -> tarfile.TarFile:
    with urllib.request.urlopen(package.tarball, timeout=60) as response:
        data = response.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != package.integrity:
        raise SystemExit(
            f"{package.name}@{package.version}: the tarball's integrity is {digest}, not the "
            f"pinned {package.integrity}; refusing it"
        )
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")


def member(archive: tarfile.TarFile, path: str) -> bytes:
    extracted = archive.extractfile(f"package/{path}")
    if extracted is None:
        raise SystemExit(f"package/{path} is not a file in the tarball")
    return extracted.read()


def main() -> None:
    written: dict[str, bytes] = {}
    versions = []
    for package in PACKAGES:
        with fetch(package) as archive:
            for source, target in package.files.items():
                written[target] = member(archive, source)
            for licence in package.licenses:
                written[f"licenses/{package.name}/{licence}"] = member(archive, licence)
        versions.append(
            {
                "name": package.name,
                "version": package.version,
                "tarball": package.tarball,
                "integrity": package.integrity,
                "files": package.files,
                "licenses": [f"licenses/{package.name}/{name}" for name in package.licenses],
            }
        )
    written["versions.json"] = (json.dumps(versions, indent=2) + "\n").encode()
    if VENDOR.exists():
        shutil.rmtree(VENDOR)  # only our own folder: a pin removed leaves nothing behind
    for path, data in sorted(written.items()):
        destination = VENDOR / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)
    sums = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {path}\n" for path, data in sorted(written.items())
    )
    (VENDOR / "SHA256SUMS").write_text(sums)
    for package in PACKAGES:
        print(f"{package.name}@{package.version}")
    print(f"{len(written)} files in {VENDOR}")


if __name__ == "__main__":
    main()
