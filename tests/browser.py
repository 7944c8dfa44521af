"""How the tests start Debian's Chromium: headless, sandbox off (root), no network chatter."""

from __future__ import annotations

import shutil

#: Debian's chromium (never a browser downloaded by a test tool).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Launch flags: the background-networking ones keep Chromium from calling out of this machine.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
