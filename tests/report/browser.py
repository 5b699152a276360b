"""A headless Chromium driven through the W3C WebDriver HTTP API with the standard library.

Needs the Debian packages `chromium` and `chromium-driver` (`chromedriver` on PATH); no Selenium.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
]


def find_chromium() -> tuple[str | None, str | None]:
    """Paths of the Chromium binary and of chromedriver (None where missing)."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(n)), None)
    return browser, shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One chromedriver process and one headless session; use as a context manager."""

    def __init__(self, profile_dir: Path, *, width: int = 1280, height: int = 900) -> None:
        browser, driver = find_chromium()
        if browser is None or driver is None:
            raise RuntimeError("chromium / chromedriver not found")
        self.port = _free_port()
        self.process = subprocess.Popen([driver, f"--port={self.port}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        self._wait_ready()
        profile_dir.mkdir(parents=True, exist_ok=True)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser,
                "args": CHROMIUM_FLAGS + [f"--user-data-dir={profile_dir}",
                                          f"--window-size={width},{height}"],
            },
        }}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"WebDriver {method} {path}: {exc.read().decode()[:500]}") from exc

    def _wait_ready(self, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self._call("GET", "/status").get("ready"):
                    return
            except (OSError, RuntimeError):
                pass
            time.sleep(0.1)
        self.process.kill()
        raise RuntimeError("chromedriver did not start")

    def open(self, path: Path) -> None:
        """Navigate to a local file; returns after the load event (images included)."""
        self._call("POST", f"/session/{self.session}/url", {"url": path.resolve().as_uri()})

    def run(self, script: str) -> Any:
        """The value of a JavaScript function body (`return ...`) run in the page."""
        return self._call("POST", f"/session/{self.session}/execute/sync",
                          {"script": script, "args": []})

    def screenshot(self, out_png: Path, *, full_page: bool = True, max_height: int = 8000) -> Path:
        """Save a PNG of the page (grown to its full height, up to `max_height` px)."""
        if full_page:
            height = int(self.run("return document.documentElement.scrollHeight;"))
            width = int(self.run("return window.outerWidth;"))
            self._call("POST", f"/session/{self.session}/window/rect",
                       {"width": width, "height": min(height + 120, max_height)})
        data = self._call("GET", f"/session/{self.session}/screenshot")
        out_png.write_bytes(base64.b64decode(data))
        return out_png

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.process.terminate()
            self.process.wait(timeout=10)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
