#!/usr/bin/env bash
# Debian's Chromium for the Playwright browser test (tests/test_browser.py). Playwright's own browser download
# (`playwright install`) is not used: the test launches /usr/bin/chromium via executable_path.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
/usr/bin/chromium --version
