"""`make demo`: every part of the product on this machine, ready to try, with one command.

Starts the project's mock upstream and the gateway on conf/demo.toml (the portal with its
development login, the admin UI), makes the person "demo" an admin and gives them a key, sends
one call through the gateway with it, and only then prints where to go: every URL it prints has
answered. Ctrl-C stops both servers. The store lives in .demo/ and starts empty every time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "conf/demo.toml"
STATE = ".demo"  # the folder of the store and spool that conf/demo.toml names
DEMO_USER = "demo"
START_TIMEOUT = 60.0


class DemoError(Exception):
    """Something did not start: one line for the person, the servers' own output above it."""


def settings(config_path: str) -> tuple[str, str, str]:
    """The gateway's URL, the mock's listen address and the model id, from the config."""
    config = tomllib.loads((ROOT / config_path).read_text(encoding="utf-8"))
    model = config["models"][0]
    return "http://" + config["server"]["listen"], model["upstreams"][0].removeprefix("http://"), model["id"]


def start_mock(listen: str, model: str) -> subprocess.Popen[str]:
    """The mock upstream, once it says READY (it prints one line and stops when the port is taken)."""
    mock = subprocess.Popen([sys.executable, "-u", "-m", "bench.mock_upstream", "--listen", listen,
                             "--model-names", model], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert mock.stdout is not None
    if not mock.stdout.readline().startswith("READY"):
        mock.wait()
        raise DemoError(f"the mock upstream did not start on {listen}")
    return mock


def start_gateway(url: str, config: str) -> subprocess.Popen[str]:
    """The gateway, once /readyz answers 200 (its log goes to this terminal)."""
    gateway = subprocess.Popen([sys.executable, "-m", "llmgateway", "serve", "--config", config], cwd=ROOT, text=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise DemoError("the gateway did not start (its message is above)")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return gateway
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise DemoError(f"the gateway did not answer {url}/readyz within {START_TIMEOUT:.0f} s")


def cli(config: str, *args: str) -> str:
    """One `llmgateway` command on the demo's config; its stdout."""
    done = subprocess.run([sys.executable, "-m", "llmgateway", *args, "--config", config], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise DemoError(f"llmgateway {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def first_call(url: str, key: str, model: str) -> str:
    """One chat call through the gateway with the demo key; the reply's text."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}]}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", body, method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)["choices"][0]["message"]["content"]
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        raise DemoError(f"a first call through the gateway failed: {exc}") from None


def next_steps(url: str, mock: str, model: str, key: str, config: str) -> str:
    """What to do now, with every URL and a key."""
    curl = (f"curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {key}' \\\n"
            f"         -H 'Content-Type: application/json' \\\n"
            f"         -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
    return f"""
The demo is running; Ctrl-C stops it. Everything below has answered.

  Gateway (OpenAI API)  {url}/v1      model "{model}", answered by the mock upstream on {mock}
  Portal                {url}/portal  development login: type the username "{DEMO_USER}"
  Admin UI              {url}/admin   the same login; "{DEMO_USER}" is an admin
  A key of {DEMO_USER}         {key}

Call it:
    {curl}
See the usage:
    .venv/bin/llmgateway usage --config {config}
The store starts empty on every `make demo`.
"""


def stop(*processes: subprocess.Popen[str] | None) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.terminate()
    for process in processes:
        if process is not None:
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=CONFIG, help=f"the demo's configuration [{CONFIG}]")
    parser.add_argument("--state", default=STATE, help=f"store and spool folder, emptied first [{STATE}]")
    args = parser.parse_args(argv)
    url, mock_listen, model = settings(args.config)
    state = ROOT / args.state
    shutil.rmtree(state, ignore_errors=True)
    os.environ["LLMGW_STORE_URL"] = f"sqlite:///{state / 'llmgateway.db'}"
    os.environ["LLMGW_SPOOL_DIR"] = str(state / "usage-spool")
    mock = gateway = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        mock = start_mock(mock_listen, model)
        gateway = start_gateway(url, args.config)
        cli(args.config, "admin", "grant", DEMO_USER)
        key = cli(args.config, "keys", "create", "--user", DEMO_USER, "--name", "demo")
        first_call(url, key, model)
        print(next_steps(url, mock_listen, model, key, args.config), flush=True)
        while mock.poll() is None and gateway.poll() is None:
            time.sleep(0.5)
        print("demo: a server stopped; stopping the other", file=sys.stderr)
        return 1
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(gateway, mock)


if __name__ == "__main__":
    sys.exit(main())
