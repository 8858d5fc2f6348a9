"""Type stubs of the Rust extension module (see the docstrings in the module itself)."""

from typing import Callable, Iterator, List, Optional, Sequence, Tuple

History = List[Tuple[str, str]]

class Tokenizer:
    @staticmethod
    def load(path: str) -> "Tokenizer": ...
    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def tokenize(self, text: str) -> List[str]: ...
    def build_prompt(self, query: str, history: Optional[History] = None) -> str: ...
    def encode_chat(self, query: str, history: Optional[History] = None) -> List[int]: ...
    @property
    def eos_token_id(self) -> int: ...
    @property
    def pad_token_id(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...

class ChatStream(Iterator[str]):
    def __iter__(self) -> "ChatStream": ...
    def __next__(self) -> str: ...
    def result(self) -> Optional[Tuple[str, History]]: ...

class Pipeline:
    def __init__(
        self,
        path: str,
        device: str = "auto",
        dtype: str = "auto",
        kv_dtype: Optional[str] = None,
        lora: Optional[List[Tuple[str, float]]] = None,
        ptuning: Optional[str] = None,
    ) -> None: ...
    @staticmethod
    def synthetic(tokenizer: str, model: str = "chatglm2-6b", device: str = "cpu", dtype: str = "q4_0", seed: int = 1) -> "Pipeline": ...
    @property
    def device(self) -> str: ...
    @property
    def family(self) -> str: ...
    def chat3(
        self,
        query: str,
        history_json: str = "[]",
        role: str = "user",
        max_length: int = 8192,
        max_new_tokens: Optional[int] = None,
        do_sample: bool = True,
        temperature: float = 0.8,
        top_p: float = 0.8,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        on_text: Optional[Callable[[str], None]] = None,
    ) -> Tuple[str, str]: ...
    @property
    def tokenizer(self) -> Tokenizer: ...
    @property
    def last_call_seconds(self) -> float: ...
    def chat(
        self,
        query: str,
        history: Optional[History] = None,
        max_length: int = 8192,
        max_new_tokens: Optional[int] = None,
        do_sample: bool = True,
        temperature: float = 0.8,
        top_p: float = 0.8,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Sequence[str] = (),
        on_text: Optional[Callable[[str], object]] = None,
    ) -> Tuple[str, History]: ...
    def stream_chat(
        self,
        query: str,
        history: Optional[History] = None,
        max_length: int = 8192,
        max_new_tokens: Optional[int] = None,
        do_sample: bool = True,
        temperature: float = 0.8,
        top_p: float = 0.8,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Sequence[str] = (),
    ) -> ChatStream: ...
    def generate(
        self,
        ids: Sequence[int],
        max_length: int = 8192,
        max_new_tokens: Optional[int] = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        on_text: Optional[Callable[[str], object]] = None,
    ) -> List[int]: ...
    def logits(self, ids: Sequence[int], all: bool = False) -> List[List[float]]: ...

def process_response(text: str) -> str: ...
def cuda_device_count() -> int: ...
