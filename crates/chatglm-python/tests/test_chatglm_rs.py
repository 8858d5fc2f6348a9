"""chatglm_rs against the official golden outputs of the dev tiny model.

Run by tests/python/run.sh (which builds the extension into a fresh venv).
CHATGLM_TESTDATA points at the golden data (default: the repository's testdata/).
"""

import json
import os
import pathlib
import threading
import time

import pytest

import chatglm_rs
from chatglm_rs import AutoModel, AutoTokenizer, Pipeline

ROOT = pathlib.Path(__file__).resolve().parents[3]
TESTDATA = pathlib.Path(os.environ.get("CHATGLM_TESTDATA", ROOT / "testdata"))
MODEL = TESTDATA / "dev" / "model" / "safetensors-f32"
GOLDEN = json.loads((TESTDATA / "dev" / "golden" / "generate.json").read_text())


def history(v):
    return [(q, r) for q, r in v]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(MODEL), trust_remote_code=True)


@pytest.fixture(scope="module")
def model():
    # The model card's lines; f32 on the CPU so the golden ids are exact.
    return AutoModel.from_pretrained(str(MODEL), trust_remote_code=True).float().cpu().eval()


def test_data_is_present():
    assert MODEL.is_dir(), f"golden test data not found at {TESTDATA} (set CHATGLM_TESTDATA)"


def test_chat_cases_match_the_official_outputs(model, tokenizer):
    for case in GOLDEN["chat"]:
        response, new_history = model.chat(
            tokenizer, case["query"], history=history(case["history"]), max_length=case["max_length"], do_sample=False
        )
        assert response == case["response"], case["query"]
        assert new_history == history(case["new_history"])


def test_prompts_and_ids_match(model, tokenizer):
    for case in GOLDEN["chat"]:
        ids = model.pipeline.tokenizer.encode_chat(case["query"], history(case["history"]))
        assert ids == case["prompt_ids"]
    for case in GOLDEN["generate"]:
        assert tokenizer.encode(case["text"]) == case["input_ids"]
        assert tokenizer.decode(case["input_ids"]) == case["text"]


def test_generate_cases_match_the_official_ids(model):
    for case in GOLDEN["generate"]:
        out = model.generate(case["input_ids"], max_new_tokens=32)
        assert out == case["new_ids"]
        # The lower-level pipeline gives the same.
        assert model.pipeline.generate(case["input_ids"], max_new_tokens=32) == case["new_ids"]


def test_streaming_equals_non_streaming(model, tokenizer):
    case = GOLDEN["chat"][1]
    last = None
    for last in model.stream_chat(
        tokenizer, case["query"], history=history(case["history"]), max_length=case["max_length"], do_sample=False
    ):
        assert isinstance(last[0], str) and last[1][-1][0] == case["query"]
    assert last is not None
    assert last[0] == case["response"]
    assert last[1] == history(case["new_history"])
    # Token-level streaming through the pipeline's callback.
    deltas = []
    response, _ = model.pipeline.chat(
        case["query"], history(case["history"]), max_length=case["max_length"], do_sample=False, on_text=deltas.append
    )
    assert "".join(deltas) == case["raw_decode"]
    assert response == case["response"]


def test_history_round_trips(model, tokenizer):
    response, h = model.chat(tokenizer, "你好", history=[], max_new_tokens=8, do_sample=False)
    assert h == [("你好", response)]
    response2, h2 = model.chat(tokenizer, "再见", history=h, max_new_tokens=8, do_sample=False)
    assert h2 == h + [("再见", response2)]
    assert tokenizer.build_prompt("再见", h) == "[Round 1]\n\n问：你好\n\n答：" + response + "\n\n[Round 2]\n\n问：再见\n\n答："


def test_sampling_is_seeded(model, tokenizer):
    a = model.chat(tokenizer, "你好", max_new_tokens=12, seed=7)
    b = model.chat(tokenizer, "你好", max_new_tokens=12, seed=7)
    assert a == b


def test_logits_for_scoring(model):
    forward = json.loads((TESTDATA / "dev" / "golden" / "forward.json").read_text())
    case = forward["cases"][1]
    rows = model.pipeline.logits(case["input_ids"], all=True)
    assert len(rows) == len(case["input_ids"])
    assert max(abs(a - b) for a, b in zip(rows[-1], case["logits_last"])) < 1e-4
    last = model.pipeline.logits(case["input_ids"])
    # One row goes through the mat-vec, all rows through the tiled product: same values to rounding.
    assert len(last) == 1 and max(abs(a - b) for a, b in zip(last[0], rows[-1])) < 1e-5


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, t: m.chat(t, "hi", num_beams=2), "num_beams"),
        (lambda m, t: m.chat(t, "hi", logits_processor=[]), "logits_processor"),
        (lambda m, t: m.chat(t, "hi", frobnicate=1), "frobnicate"),
        (lambda m, t: m.chat(t, "hi", temperature=-1.0), "temperature"),
        (lambda m, t: m.chat(t, "hi", top_p=1.5), "top_p"),
        (lambda m, t: m.chat(t, "hi", history=[("only one",)]), "history"),
        (lambda m, t: m.chat(t, "hi", history=[{"role": "user", "content": "x"}]), "ChatGLM3"),
        (lambda m, t: list(m.stream_chat(t, "hi", past_key_values=object())), "past_key_values"),
        (lambda m, t: m.quantize(3), "quantize"),
        (lambda m, t: m.to("tpu"), "device"),
        (lambda m, t: AutoModel.from_pretrained(str(MODEL), torch_dtype="int3"), "torch_dtype"),
        (lambda m, t: AutoModel.from_pretrained(str(MODEL), load_in_8bit=True), "load_in_8bit"),
        (lambda m, t: t.encode("x", truncation=True), "truncation"),
    ],
)
def test_bad_arguments_raise(model, tokenizer, call, message):
    with pytest.raises(ValueError, match=message):
        call(model, tokenizer)


def test_load_errors_are_python_exceptions():
    with pytest.raises(RuntimeError):
        Pipeline(str(TESTDATA / "no-such-model"), device="cpu")
    with pytest.raises(ValueError, match="device"):
        Pipeline(str(MODEL), device="tpu")
    with pytest.raises(ValueError):
        Pipeline(str(MODEL), device="cpu", dtype="f12")


def test_a_python_thread_runs_while_the_model_computes(model, tokenizer):
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    model.pipeline  # loaded before timing
    t = threading.Thread(target=ticker)
    start = time.perf_counter()
    t.start()
    model.chat(tokenizer, "你好", max_new_tokens=300, max_length=500, do_sample=False)
    end = time.perf_counter()
    stop.set()
    t.join()
    during = [x for x in ticks if start < x < end]
    # With the GIL held for the whole call the ticker could not run at all.
    assert end - start > 0.01
    assert len(during) >= 3, f"{len(during)} ticks in {end - start:.3f} s"


def test_device_and_reload(model):
    assert model.device == "cpu"
    assert chatglm_rs.cuda_device_count() >= 0
    m = AutoModel.from_pretrained(str(MODEL)).half().cpu()
    assert m.pipeline.device == "cpu"
    m.float()  # changes the format: reloaded on next use
    assert m._pipeline is None
    assert m.generate(GOLDEN["generate"][0]["input_ids"], max_new_tokens=32) == GOLDEN["generate"][0]["new_ids"]


@pytest.mark.skipif(chatglm_rs.cuda_device_count() == 0, reason="no usable CUDA GPU")
def test_cuda_gives_the_golden_reply():
    m = AutoModel.from_pretrained(str(MODEL)).float().cuda()
    case = GOLDEN["chat"][0]
    response, _ = m.chat(None, case["query"], history=history(case["history"]), max_length=case["max_length"], do_sample=False)
    assert response == case["response"]


CARD = """
from chatglm_rs import AutoTokenizer, AutoModel
tokenizer = AutoTokenizer.from_pretrained({path!r}, trust_remote_code=True)
model = AutoModel.from_pretrained({path!r}, trust_remote_code=True){device}
model = model.eval()
response, history = model.chat(tokenizer, {query!r}, history={history!r}, max_length={max_length}, do_sample=False)
print(response)
"""


def run_card(path, device=""):
    import subprocess
    import sys

    case = GOLDEN["chat"][0]
    script = CARD.format(
        path=str(path), device=device, query=case["query"], history=history(case["history"]), max_length=case["max_length"]
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout == case["response"] + "\n"


def test_the_model_cards_lines_print_the_golden_reply():
    run_card(MODEL, ".float()")


def test_the_model_cards_lines_work_with_a_gguf_file(tmp_path):
    import subprocess

    exe = ROOT / "target" / "release" / "chatglm"
    if not exe.exists():
        pytest.skip(f"{exe} not built (cargo build --release -p chatglm-cli)")
    gguf = tmp_path / "dev-f32.gguf"
    subprocess.run([str(exe), "quantize", "-m", str(MODEL), "--dtype", "f32", "-o", str(gguf)], check=True, capture_output=True)
    run_card(gguf, ".float().cpu()")


def test_ctrl_c_interrupts_a_generation(model, tokenizer):
    import signal

    def long_chat():
        return model.chat(tokenizer, "你好", max_new_tokens=450, max_length=500, do_sample=False)

    long_chat()  # warm
    full = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        long_chat()
        full = min(full, time.perf_counter() - t0)
    # SIGINT a tenth of the way in: the call must stop at the next token, not run to the end.
    # On a busy 2-core machine one call can run slow enough that the signal lands after it
    # returned; that attempt proves nothing either way, so up to three are made.
    def interrupted_after():
        timer = threading.Timer(full * 0.1, lambda: os.kill(os.getpid(), signal.SIGINT))
        started = time.perf_counter()
        try:
            timer.start()
            long_chat()
            timer.join()
            time.sleep(0.05)  # a late signal is taken here, not in a later test
            return None
        except KeyboardInterrupt:
            elapsed = time.perf_counter() - started
            timer.join()
            return elapsed

    attempts = []
    for _ in range(3):
        attempts.append(interrupted_after())
        if attempts[-1] is not None and attempts[-1] < full * 0.9:
            return
    pytest.fail(f"no call of {full:.3f} s stopped early on SIGINT: {attempts}")


FAMILY = ROOT / "golden" / "family" / "chatglm3"


def test_lora_and_p_tuning_load_with_the_model():
    # The tiny ChatGLM3 model with a PEFT LoRA adapter and with a P-Tuning v2
    # prefix: both change its logits; the P-Tuning prefix gives the official ones.
    base = FAMILY / "tiny" / "model"
    golden = json.loads((FAMILY / "ptuning_golden.json").read_text())["cases"]["ptuning-v2"]
    ids = golden["input_ids"]
    plain = AutoModel.from_pretrained(str(base), device="cpu", dtype="f32").pipeline.logits(ids)[0]
    tuned = AutoModel.from_pretrained(
        str(base), device="cpu", dtype="f32", ptuning_checkpoint=str(FAMILY / "ptuning-v2")
    ).pipeline.logits(ids)[0]
    assert max(abs(a - b) for a, b in zip(tuned, golden["logits_last"])) < 1e-4
    assert max(abs(a - b) for a, b in zip(tuned, plain)) > 1e-2
    merged = AutoModel.from_pretrained(str(base), device="cpu", dtype="f32", lora=str(FAMILY / "lora")).pipeline.logits(ids)[0]
    assert max(abs(a - b) for a, b in zip(merged, plain)) > 1e-3
    zero = AutoModel.from_pretrained(str(base), device="cpu", dtype="f32", lora=[(str(FAMILY / "lora"), 0.0)])
    assert max(abs(a - b) for a, b in zip(zero.pipeline.logits(ids)[0], plain)) < 1e-5
    with pytest.raises(Exception, match="pre_seq_len"):
        AutoModel.from_pretrained(str(base), device="cpu", ptuning_checkpoint=str(base)).pipeline


def test_chatglm3_chat_matches_the_official_chats():
    # The tiny ChatGLM3 model's official chat() cases (greedy): histories as the
    # official list of messages, system prompts with tools, an observation turn.
    golden = json.loads((FAMILY / "tiny" / "golden" / "generate.json").read_text())
    model = AutoModel.from_pretrained(str(FAMILY / "tiny" / "model"), device="cpu", dtype="f32")
    assert model.pipeline.family == "chatglm3"
    checked = 0
    for case in golden["chat"]:
        if case["forced"] is not None:
            continue
        response, new_history = model.chat(
            None, case["query"], history=case["history"], role=case["role"], max_length=case["max_length"], do_sample=False
        )
        assert response == case["response"], case["query"]
        assert new_history == case["new_history"], case["query"]
        checked += 1
        # Streaming ends with the same result.
        last = list(
            model.stream_chat(
                None, case["query"], history=case["history"], role=case["role"], max_length=case["max_length"], do_sample=False
            )
        )[-1]
        assert last == (case["response"], case["new_history"])
    assert checked >= 3
    with pytest.raises(ValueError, match="message dict"):
        model.chat(None, "hi", history=[("q", "a")])
