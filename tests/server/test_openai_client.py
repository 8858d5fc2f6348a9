"""`chatglm serve` against the official `openai` Python client, on the tiny dev model.

Run through tests/server/run.sh (it builds the binary and installs the client).
Checks: /v1/models, non-streaming and streaming chat, that temperature=0 gives the
same text as `chatglm generate --temperature 0 --json`, usage counts, completions,
and that errors surface as the client's typed exceptions. Prints
'N passed, N failed' and exits non-zero on any failure.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import traceback
import urllib.request

import openai

QUERY = "你好"
MAX_TOKENS = 32


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`chatglm serve` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, binary, model, *extra):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "serve", "-m", model, "--port", str(self.port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.proc.stderr.read().decode())
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not become healthy in 60 s")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def generate_json(binary, model, query, max_new):
    out = subprocess.run(
        [binary, "generate", "-m", model, "-p", query, "--temperature", "0",
         "--max-new-tokens", str(max_new), "--json"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args()

    results = []

    def check(name, fn):
        try:
            fn()
            results.append((name, True))
            print(f"ok   {name}")
        except Exception:  # noqa: BLE001 - report every failure, keep going
            results.append((name, False))
            print(f"FAIL {name}")
            traceback.print_exc()

    server = Server(args.bin, args.model, "--model-id", "chatglm2-6b-dev")
    try:
        client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
        golden = generate_json(args.bin, args.model, QUERY, MAX_TOKENS)

        def models():
            ids = [m.id for m in client.models.list().data]
            assert ids == ["chatglm2-6b-dev"], ids

        def chat_matches_generate():
            r = client.chat.completions.create(
                model="chatglm2-6b-dev",
                messages=[{"role": "user", "content": QUERY}],
                temperature=0, max_tokens=MAX_TOKENS,
            )
            assert r.choices[0].message.role == "assistant"
            assert r.choices[0].message.content == golden["text"], (r.choices[0].message.content, golden["text"])
            assert r.choices[0].finish_reason == golden["finish_reason"], r.choices[0].finish_reason
            assert r.usage.prompt_tokens == len(golden["prompt_ids"]), r.usage
            assert r.usage.completion_tokens == len(golden["generated_ids"]), r.usage
            assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

        def streaming_chat():
            stream = client.chat.completions.create(
                model="chatglm2-6b-dev",
                messages=[{"role": "user", "content": QUERY}],
                temperature=0, max_tokens=MAX_TOKENS, stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            assert chunks[0].choices[0].delta.role == "assistant"
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text.strip() == golden["text"], (text, golden["text"])
            finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            assert finishes == [golden["finish_reason"]], finishes
            assert chunks[-1].usage.completion_tokens == len(golden["generated_ids"]), chunks[-1]

        def seeded_sampling_repeats():
            kw = dict(model="m", messages=[{"role": "user", "content": QUERY}],
                      temperature=0.9, top_p=0.9, max_tokens=16, seed=42)
            a = client.chat.completions.create(**kw).choices[0].message.content
            b = client.chat.completions.create(**kw).choices[0].message.content
            assert a == b, (a, b)

        def completions():
            r = client.completions.create(model="m", prompt="hello", max_tokens=5, temperature=0)
            assert r.usage.completion_tokens == 5, r.usage
            assert isinstance(r.choices[0].text, str)

        def errors_are_typed():
            try:
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}], temperature=5)
            except openai.BadRequestError as e:
                assert e.status_code == 400
                assert e.body["param"] == "temperature", e.body
            else:
                raise AssertionError("temperature=5 was accepted")
            try:
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "你好 " * 400}])
            except openai.BadRequestError as e:
                assert e.body["code"] == "context_length_exceeded", e.body
            else:
                raise AssertionError("an over-long prompt was accepted")

        check("models", models)
        check("chat (temperature 0) == chatglm generate --json", chat_matches_generate)
        check("streaming chat", streaming_chat)
        check("seeded sampling repeats", seeded_sampling_repeats)
        check("completions", completions)
        check("errors are typed", errors_are_typed)

        def chatglm2_refuses_tools():
            try:
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL])
            except openai.BadRequestError as e:
                assert e.body["param"] == "tools", e.body
            else:
                raise AssertionError("a ChatGLM2 model accepted tools")

        check("ChatGLM2 refuses tools", chatglm2_refuses_tools)
    finally:
        server.stop()

    # A ChatGLM3 tool-call round trip (the tiny random ChatGLM3 model of the
    # family golden data: the shape of the exchange is tested, not the model).
    chatglm3 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../golden/family/chatglm3/tiny/model")
    glm3 = Server(args.bin, chatglm3, "--model-id", "chatglm3-tiny")
    try:
        client3 = openai.OpenAI(base_url=glm3.base + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "北京天气怎么样？"}]

        def tool_round_trip():
            r = client3.chat.completions.create(
                model="chatglm3-tiny", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto",
                temperature=0, max_tokens=8)
            m = r.choices[0].message
            assert m.role == "assistant"
            assert (m.content is not None) or m.tool_calls, m
            # The client reports the call's result back, as an application would.
            call = {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": "北京"}, ensure_ascii=False)}}
            follow = messages + [
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"temp": 20})},
            ]
            r2 = client3.chat.completions.create(
                model="chatglm3-tiny", messages=follow, tools=[WEATHER_TOOL], temperature=0, max_tokens=8)
            assert r2.choices[0].message.role == "assistant"
            assert r2.usage.prompt_tokens > r.usage.prompt_tokens, (r.usage, r2.usage)
            # Streamed, the client assembles the reply from the chunks.
            stream = client3.chat.completions.create(
                model="chatglm3-tiny", messages=follow, tools=[WEATHER_TOOL], temperature=0, max_tokens=8,
                stream=True)
            chunks = list(stream)
            assert chunks[0].choices[0].delta.role == "assistant"
            assert any(c.choices and c.choices[0].finish_reason for c in chunks)

        def chatglm3_plain_chat():
            r = client3.chat.completions.create(
                model="chatglm3-tiny",
                messages=[{"role": "system", "content": "You are ChatGLM3."}, {"role": "user", "content": "你好"}],
                temperature=0, max_tokens=8)
            assert isinstance(r.choices[0].message.content, str)
            assert r.choices[0].message.tool_calls is None

        check("ChatGLM3 tool-call round trip", tool_round_trip)
        check("ChatGLM3 plain chat", chatglm3_plain_chat)
    finally:
        glm3.stop()

    keyed = Server(args.bin, args.model, "--api-key", "sekrit")
    try:
        def api_key():
            bad = openai.OpenAI(base_url=keyed.base + "/v1", api_key="wrong", max_retries=0)
            try:
                bad.models.list()
            except openai.AuthenticationError as e:
                assert e.status_code == 401
            else:
                raise AssertionError("a wrong key was accepted")
            good = openai.OpenAI(base_url=keyed.base + "/v1", api_key="sekrit", max_retries=0)
            assert len(good.models.list().data) == 1

        check("api key", api_key)
    finally:
        keyed.stop()

    passed = sum(ok for _, ok in results)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
