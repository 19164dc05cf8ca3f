"""`make demo` (tools/demo.py) as a newcomer runs it: it prints what to do only once everything
answers, every URL and the key it prints work, the demo person is an admin, Ctrl-C stops it all;
and a port already taken gets one clear line, not a traceback."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port

DEMO = ROOT / "tools" / "demo.py"
DONE = "The store starts empty"


def demo_config(tmp_path: Path, gateway_port: int, mock_port: int) -> Path:
    """conf/demo.toml on free ports, so that the test never meets a demo someone is running."""
    text = (ROOT / "conf" / "demo.toml").read_text(encoding="utf-8")
    assert "127.0.0.1:8000" in text and "127.0.0.1:8001" in text
    path = tmp_path / "demo.toml"
    path.write_text(text.replace("127.0.0.1:8000", f"127.0.0.1:{gateway_port}")
                    .replace("127.0.0.1:8001", f"127.0.0.1:{mock_port}"), encoding="utf-8")
    return path


def start_demo(config: Path, state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(DEMO), "--config", str(config), "--state", str(state)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    yield free_port(), free_port()


def test_the_demo_says_what_to_do_once_everything_answers(tmp_path: Path, ports: tuple[int, int]) -> None:
    gateway_port, mock_port = ports
    demo = start_demo(demo_config(tmp_path, gateway_port, mock_port), tmp_path / "state")
    try:
        assert demo.stdout is not None
        printed = ""
        for line in demo.stdout:
            printed += line
            if line.startswith(DONE):
                break
        url = f"http://127.0.0.1:{gateway_port}"
        assert f"{url}/v1 " in printed and f"{url}/portal " in printed and f"{url}/admin " in printed
        key = re.search(r"A key of demo +(sk-lgw-\S+)", printed)
        assert key, printed

        reply = requests.post(url + "/v1/chat/completions", timeout=10, headers={"Authorization": f"Bearer {key[1]}"},
                              json={"model": "llama-3-8b", "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        browser = requests.Session()
        login = browser.get(url + "/portal", timeout=10)
        assert login.url.startswith(url + "/portal/dev-login")
        browser.post(url + "/portal/dev-login", timeout=10,
                     data={"username": "demo", "next": "/admin", "_xsrf": browser.cookies["_xsrf"]})
        assert browser.get(url + "/admin/api/v1/users", timeout=10).status_code == 200, "demo is an admin"
    finally:
        demo.send_signal(signal.SIGINT)
        status = demo.wait(timeout=60)
    assert status == 0
    for port in ports:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


def test_a_port_in_use_gets_one_line(tmp_path: Path, ports: tuple[int, int]) -> None:
    gateway_port, mock_port = ports
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", mock_port))
        taken.listen()
        demo = start_demo(demo_config(tmp_path, gateway_port, mock_port), tmp_path / "state")
        _, errors = demo.communicate(timeout=60)
    assert demo.returncode == 1
    assert errors.splitlines() == [f"cannot listen on 127.0.0.1:{mock_port}: Address already in use "
                                   "(is another one running?)",
                                   f"demo: the mock upstream did not start on 127.0.0.1:{mock_port}"]
