#!/usr/bin/env bash
# Install Debian's headless Chromium for the website's browser tests (tests/hub_web/test_browser.py).
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (or sudo) and apt.
# Playwright is told to drive this binary; `playwright install` (which downloads its own browsers) is never used.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo unknown version)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_chromium.sh: need root or sudo to apt-get install chromium" >&2
        exit 1
    fi
else
    SUDO=""
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# fonts-liberation gives the screenshots readable glyphs; chromium-driver is not needed by Playwright but is
# harmless and lets Selenium users run the same checks.
$SUDO apt-get install -y --no-install-recommends chromium chromium-driver fonts-liberation
/usr/bin/chromium --version
