"""ChatGLM2-6B on ChatGLM.rs, with the official Python API.

Existing scripts change only their imports::

    from chatglm_rs import AutoTokenizer, AutoModel
    tokenizer = AutoTokenizer.from_pretrained("THUDM/chatglm2-6b", trust_remote_code=True)
    model = AutoModel.from_pretrained("THUDM/chatglm2-6b", trust_remote_code=True).half().cuda()
    model = model.eval()
    response, history = model.chat(tokenizer, "你好", history=[])

``name_or_path`` is a model folder (config.json, tokenizer.model, safetensors or
PyTorch ``.bin``), a ``.gguf`` file, or a Hugging Face hub id (downloaded into the
Hugging Face cache on first use, like the ``chatglm`` command).

The model is loaded on first use, not by ``from_pretrained``: ``.half()``,
``.float()``, ``.bfloat16()``, ``.quantize(bits)``, ``.cuda()`` and ``.cpu()``
choose the weight format and device it is loaded with (so ``.half().cuda()``
loads once, in f16, on the GPU). After it is loaded they reload it. ``.eval()``
is a no-op (there is no training mode). Arguments that the official API takes
but this engine does not support (``num_beams > 1``, ``logits_processor``,
``past_key_values``) raise ``ValueError`` rather than being ignored.

The lower-level :class:`Pipeline` gives ``generate(ids)``, token-level streaming
and logits for scoring.
"""

from __future__ import annotations

import json
import os
import queue
import threading

from typing import Any, Iterator, List, Optional, Sequence, Tuple

from ._native import ChatStream, Pipeline, Tokenizer, cuda_device_count, process_response

__all__ = [
    "AutoModel",
    "AutoTokenizer",
    "ChatGLMModel",
    "ChatGLMTokenizer",
    "ChatStream",
    "Pipeline",
    "Tokenizer",
    "cuda_device_count",
    "process_response",
]

History = List[Tuple[str, str]]


def _history(history: Optional[Sequence[Sequence[str]]]) -> History:
    if history is None:
        return []
    out = []
    for i, turn in enumerate(history):
        if isinstance(turn, dict):
            raise ValueError(
                f"history[{i}] is a dict (the ChatGLM3 message format); ChatGLM2 history is a list of (query, response) pairs"
            )
        if len(turn) != 2 or not all(isinstance(t, str) for t in turn):
            raise ValueError(f"history[{i}] must be a (query, response) pair of strings, got {turn!r}")
        out.append((turn[0], turn[1]))
    return out


class ChatGLMTokenizer:
    """The official ``ChatGLMTokenizer`` calls: ``encode``, ``decode``,
    ``build_prompt``, ``tokenize``, ``__call__``."""

    def __init__(self, native: Tokenizer):
        self._native = native

    def encode(self, text: str, add_special_tokens: bool = True, **kwargs: Any) -> List[int]:
        if kwargs:
            raise ValueError(f"unsupported arguments to encode: {sorted(kwargs)}")
        return self._native.encode(text, add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False, **kwargs: Any) -> str:
        # Special tokens decode to the empty string either way, as in the official tokenizer.
        if kwargs:
            raise ValueError(f"unsupported arguments to decode: {sorted(kwargs)}")
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._native.decode([int(i) for i in ids])

    def tokenize(self, text: str) -> List[str]:
        return self._native.tokenize(text)

    def build_prompt(self, query: str, history: Optional[History] = None) -> str:
        return self._native.build_prompt(query, _history(history))

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = self.encode(text, add_special_tokens)
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "position_ids": list(range(len(ids)))}

    @property
    def eos_token_id(self) -> int:
        return self._native.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self._native.pad_token_id

    @property
    def vocab_size(self) -> int:
        return self._native.vocab_size


class AutoTokenizer:
    """``AutoTokenizer.from_pretrained(name_or_path)``; ``trust_remote_code`` is accepted and ignored."""

    @staticmethod
    def from_pretrained(name_or_path: str, trust_remote_code: bool = False, **kwargs: Any) -> ChatGLMTokenizer:
        _ = trust_remote_code
        path = _with_revision(str(name_or_path), kwargs.pop("revision", None))
        if kwargs:
            raise ValueError(f"unsupported arguments to AutoTokenizer.from_pretrained: {sorted(kwargs)}")
        return ChatGLMTokenizer(Tokenizer.load(path))


_DTYPES = {"auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}


class ChatGLMModel:
    """The official ``ChatGLMForConditionalGeneration`` chat API on ChatGLM.rs."""

    def __init__(
        self,
        name_or_path: str,
        device: str = "auto",
        dtype: str = "auto",
        kv_dtype: Optional[str] = None,
        lora: Optional[Any] = None,
        ptuning_checkpoint: Optional[str] = None,
    ):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r} (expected one of {sorted(_DTYPES)})")
        self._path = str(name_or_path)
        self._device = device
        self._dtype = dtype
        self._kv_dtype = kv_dtype
        self._lora = _lora_list(lora)
        self._ptuning = None if ptuning_checkpoint is None else str(ptuning_checkpoint)
        self._pipeline: Optional[Pipeline] = None

    # Format and device: chosen before the first use, reloaded after it.
    def _set(self, device: Optional[str] = None, dtype: Optional[str] = None) -> "ChatGLMModel":
        changed = (device is not None and device != self._device) or (dtype is not None and dtype != self._dtype)
        if device is not None:
            self._device = device
        if dtype is not None:
            self._dtype = dtype
        if changed:
            self._pipeline = None
        return self

    def half(self) -> "ChatGLMModel":
        """f16 weights."""
        return self._set(dtype="f16")

    def float(self) -> "ChatGLMModel":
        """f32 weights (exact; the golden tests' format)."""
        return self._set(dtype="f32")

    def bfloat16(self) -> "ChatGLMModel":
        """bf16 weights."""
        return self._set(dtype="bf16")

    def quantize(self, bits: int) -> "ChatGLMModel":
        """Weight-only quantization as the official ``model.quantize(4|8)``: q4_0 or q8_0."""
        if bits not in (4, 8):
            raise ValueError(f"quantize(bits) takes 4 or 8, got {bits!r}")
        return self._set(dtype="q4_0" if bits == 4 else "q8_0")

    def cuda(self, device: Optional[int] = None) -> "ChatGLMModel":
        """Run on CUDA GPU `device` (0 by default)."""
        return self._set(device="cuda" if device is None else f"cuda:{int(device)}")

    def cpu(self) -> "ChatGLMModel":
        return self._set(device="cpu")

    def to(self, device: str) -> "ChatGLMModel":
        if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ValueError(f"unknown device {device!r} (expected cpu, cuda or cuda:N)")
        return self._set(device=str(device))

    def eval(self) -> "ChatGLMModel":
        """A no-op: there is no training mode."""
        return self

    @property
    def pipeline(self) -> Pipeline:
        """The loaded :class:`Pipeline` (loads it on first access)."""
        if self._pipeline is None:
            self._pipeline = Pipeline(self._path, self._device, self._dtype, self._kv_dtype, self._lora, self._ptuning)
        return self._pipeline

    @property
    def device(self) -> str:
        return self.pipeline.device

    @staticmethod
    def _check(num_beams: int, logits_processor: Any, kwargs: dict) -> dict:
        if num_beams != 1:
            raise ValueError(f"num_beams={num_beams} is not supported (beam search is not implemented); use num_beams=1")
        if logits_processor is not None:
            raise ValueError("logits_processor is not supported (the NaN/Inf guard of the official chat() is built in)")
        known = {"top_k", "repetition_penalty", "seed", "max_new_tokens", "stop"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unsupported arguments: {unknown} (supported extras: {sorted(known)})")
        return kwargs

    def chat(
        self,
        tokenizer: Optional[ChatGLMTokenizer],
        query: str,
        history: Optional[History] = None,
        max_length: int = 8192,
        num_beams: int = 1,
        do_sample: bool = True,
        top_p: float = 0.8,
        temperature: float = 0.8,
        logits_processor: Any = None,
        **kwargs: Any,
    ) -> Tuple[str, History]:
        """One round, as the official ``model.chat``: returns ``(response, history + [(query, response)])``.

        The tokenizer argument is accepted for compatibility; the model uses its own.
        Extra keyword arguments: ``top_k``, ``repetition_penalty``, ``seed``, ``max_new_tokens``, ``stop``.
        """
        _ = tokenizer
        role = kwargs.pop("role", "user")
        extra = self._check(num_beams, logits_processor, kwargs)
        if self.pipeline.family == "chatglm3":
            return self._chat3(query, history, role, max_length, do_sample, top_p, temperature, extra, None)
        if role != "user":
            raise ValueError("role is a ChatGLM3 argument; this is a ChatGLM2 model")
        return self.pipeline.chat(
            query,
            _history(history),
            max_length=max_length,
            do_sample=do_sample,
            top_p=top_p,
            temperature=temperature,
            **extra,
        )

    def _chat3(self, query, history, role, max_length, do_sample, top_p, temperature, extra, on_text):
        # The official ChatGLM3 chat(): history is the list of messages; the reply a
        # string, or {"name", "parameters"} for a tool call.
        if "stop" in extra:
            raise ValueError("stop is not supported for ChatGLM3 (it stops at its role tokens)")
        history = list(history or [])
        for i, m in enumerate(history):
            if not isinstance(m, dict):
                raise ValueError(f"history[{i}] must be a message dict ({{'role', 'content'}}) for ChatGLM3, got {m!r}")
        reply, new = self.pipeline.chat3(
            query,
            json.dumps(history, ensure_ascii=False),
            role,
            max_length=max_length,
            do_sample=do_sample,
            top_p=top_p,
            temperature=temperature,
            on_text=on_text,
            **extra,
        )
        # As the official code: the given messages as they were, the query, then the reply's messages.
        tail = json.loads(new)[len(history) + 1 :]
        return json.loads(reply), history + [{"role": role, "content": query}] + tail

    def stream_chat(
        self,
        tokenizer: Optional[ChatGLMTokenizer],
        query: str,
        history: Optional[History] = None,
        past_key_values: Any = None,
        max_length: int = 8192,
        do_sample: bool = True,
        top_p: float = 0.8,
        temperature: float = 0.8,
        logits_processor: Any = None,
        return_past_key_values: bool = False,
        **kwargs: Any,
    ) -> Iterator[Tuple[str, History]]:
        """Yields ``(response_so_far, history + [(query, response_so_far)])`` as the official ``stream_chat``.

        ``past_key_values`` / ``return_past_key_values`` are not supported (the engine keeps its own cache).
        """
        _ = tokenizer
        if past_key_values is not None or return_past_key_values:
            raise ValueError("past_key_values / return_past_key_values are not supported; pass the history instead")
        role = kwargs.pop("role", "user")
        extra = self._check(1, logits_processor, kwargs)
        if self.pipeline.family == "chatglm3":
            yield from self._stream_chat3(query, history, role, max_length, do_sample, top_p, temperature, extra)
            return
        if role != "user":
            raise ValueError("role is a ChatGLM3 argument; this is a ChatGLM2 model")
        history = _history(history)
        stream = self.pipeline.stream_chat(
            query, history, max_length=max_length, do_sample=do_sample, top_p=top_p, temperature=temperature, **extra
        )
        text = ""
        for delta in stream:
            text += delta
            response = process_response(text)
            if response:
                yield response, history + [(query, response)]
        done = stream.result()
        if done is not None:
            yield done[0], done[1]

    def _stream_chat3(self, query, history, role, max_length, do_sample, top_p, temperature, extra):
        # The round runs on a Python thread (the GIL is released while the model
        # computes); its text arrives through a queue.
        deltas: "queue.Queue" = queue.Queue()
        done: dict = {}

        def run() -> None:
            try:
                done["result"] = self._chat3(
                    query, history, role, max_length, do_sample, top_p, temperature, extra, deltas.put
                )
            except BaseException as e:  # re-raised in the caller's thread
                done["error"] = e
            deltas.put(None)

        threading.Thread(target=run, name="chatglm-stream-chat3", daemon=True).start()
        base = list(history or []) + [{"role": role, "content": query}]
        text = ""
        while True:
            delta = deltas.get()
            if delta is None:
                break
            text += delta
            if text and not text.endswith("\ufffd"):
                yield text.strip(), base + [{"role": "assistant", "metadata": "", "content": text.strip()}]
        if "error" in done:
            raise done["error"]
        yield done["result"]

    def generate(self, input_ids: Sequence[int], max_new_tokens: Optional[int] = None, **kwargs: Any) -> List[int]:
        """Generated ids after ``input_ids`` (greedy unless ``do_sample=True``)."""
        if hasattr(input_ids, "tolist"):
            input_ids = input_ids.tolist()
        if input_ids and isinstance(input_ids[0], (list, tuple)):
            if len(input_ids) != 1:
                raise ValueError("generate takes one sequence (batch size 1)")
            input_ids = input_ids[0]
        return self.pipeline.generate([int(i) for i in input_ids], max_new_tokens=max_new_tokens, **kwargs)


class AutoModel:
    """``AutoModel.from_pretrained(name_or_path, device="auto", dtype="auto")``.

    ``trust_remote_code`` is accepted and ignored; ``torch_dtype`` may be given as a
    string (``"float16"``, ``"bfloat16"``, ``"float32"``) or a torch dtype.
    """

    @staticmethod
    def from_pretrained(
        name_or_path: str,
        trust_remote_code: bool = False,
        device: str = "auto",
        dtype: str = "auto",
        kv_dtype: Optional[str] = None,
        torch_dtype: Any = None,
        lora: Optional[Any] = None,
        ptuning_checkpoint: Optional[str] = None,
        **kwargs: Any,
    ) -> ChatGLMModel:
        _ = trust_remote_code
        name_or_path = _with_revision(str(name_or_path), kwargs.pop("revision", None))
        if kwargs:
            raise ValueError(f"unsupported arguments to AutoModel.from_pretrained: {sorted(kwargs)}")
        if torch_dtype is not None:
            name = str(torch_dtype).replace("torch.", "")
            dtype = {"float16": "f16", "half": "f16", "bfloat16": "bf16", "float32": "f32", "float": "f32", "auto": "auto"}.get(
                name
            ) or _bad_dtype(name)
        return ChatGLMModel(
            name_or_path, device=device, dtype=dtype, kv_dtype=kv_dtype, lora=lora, ptuning_checkpoint=ptuning_checkpoint
        )


def _lora_list(lora: Any) -> List[Tuple[str, float]]:
    # A folder, a (folder, scale) pair, or a list of either (merged in order).
    if lora is None:
        return []
    if isinstance(lora, (str, os.PathLike)) or (isinstance(lora, tuple) and len(lora) == 2 and not isinstance(lora[1], (str, os.PathLike))):
        lora = [lora]
    out = []
    for item in lora:
        if isinstance(item, tuple):
            out.append((str(item[0]), float(item[1])))
        else:
            out.append((str(item), 1.0))
    return out


def _with_revision(name_or_path: str, revision: Optional[str]) -> str:
    # Hub ids take a revision as `owner/name@revision`, as the command line does.
    return name_or_path if revision is None else f"{name_or_path}@{revision}"


def _bad_dtype(name: str) -> str:
    raise ValueError(f"unsupported torch_dtype {name!r} (float16, bfloat16 or float32)")

