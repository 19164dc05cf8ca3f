#!/bin/sh
# The Debian/Ubuntu packages a make target needs, each given as CHECK:PACKAGE, where CHECK is a
# command that must be on the PATH, or "ensurepip" (python3 -m venv works). Missing packages are
# installed with apt-get when we are root; otherwise we stop at once with the command to run.
# Usage: tools/need-packages.sh [--python PYTHON] CHECK:PACKAGE...
set -eu
python=python3
if [ "${1:-}" = "--python" ]; then python=$2; shift 2; fi
missing=""
for pair in "$@"; do
    check=${pair%%:*}
    package=${pair#*:}
    if [ "$check" = ensurepip ]; then
        "$python" -c "import ensurepip, venv" 2>/dev/null && continue
    elif command -v "$check" >/dev/null 2>&1; then
        continue
    fi
    # Ubuntu ships Chromium as chromium-browser.
    if [ "$package" = chromium ] && grep -qs '^ID=ubuntu' /etc/os-release; then package=chromium-browser; fi
    missing="$missing $package"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing system packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    exit 0
fi
echo "Missing system packages:$missing" >&2
if command -v apt-get >/dev/null 2>&1; then
    echo "Install them, then run make again:" >&2
    echo "    sudo apt-get install -y$missing" >&2
else
    echo "Install them with your system's package manager (these are the Debian/Ubuntu names), then run make again." >&2
fi
exit 1
