"""Typed reads from a Hugging Face ``config.json`` dict, failing with the missing key's name."""

from __future__ import annotations

from collections.abc import Mapping

from hybridxfer.hf._errors import UnsupportedModelError

__all__ = ["HfConfig"]

#: vLLM ``dtype="auto"`` on CUDA: float32 checkpoints are served in bfloat16
#: (vllm/config/model.py _resolve_auto_dtype); half types are kept.
_AUTO_DTYPE = {"bfloat16": "bfloat16", "float16": "float16", "float32": "bfloat16"}


#: transformers allocates its caches in the dtype the model runs in (``dtype`` in 5.x,
#: ``torch_dtype`` before); a config without one loads as torch's default, float32.
_TRANSFORMERS_DTYPES = ("bfloat16", "float16", "float32")


class HfConfig:
    """A view of one config dict (the text config, for multimodal wrappers), read for one engine.

    ``engine`` is the serving engine whose cache rules apply (``vllm`` or
    ``transformers``): the family rules are shared, the dtypes and arrangement differ.
    """

    def __init__(self, raw: Mapping[str, object], architecture: str, engine: str = "vllm") -> None:
        text = raw.get("text_config")
        self.raw: Mapping[str, object] = text if isinstance(text, Mapping) else raw
        self.outer = raw
        self.architecture = architecture
        self.engine = engine

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def get_int(self, key: str, default: int | None = None) -> int:
        value = self.raw.get(key)
        if value is None:
            if default is not None:
                return default
            raise UnsupportedModelError(f"{self.architecture}: config.json has no {key!r}")
        if not isinstance(value, int) or isinstance(value, bool):
            raise UnsupportedModelError(f"{self.architecture}: {key!r} must be an integer, got {value!r}")
        return value

    def get_str(self, key: str, default: str | None = None) -> str:
        value = self.raw.get(key)
        if value is None:
            if default is not None:
                return default
            raise UnsupportedModelError(f"{self.architecture}: config.json has no {key!r}")
        if not isinstance(value, str):
            raise UnsupportedModelError(f"{self.architecture}: {key!r} must be a string, got {value!r}")
        return value

    def get_str_list(self, key: str) -> list[str]:
        value = self.raw.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UnsupportedModelError(f"{self.architecture}: {key!r} must be a list of strings")
        return [str(v) for v in value]

    def model_dtype(self) -> str:
        """The dtype the engine runs the model in (``torch_dtype``; transformers 5: ``dtype``).

        vLLM with ``--dtype auto`` serves float32 checkpoints in bfloat16 and assumes
        bfloat16 when the config is silent; transformers keeps the config's dtype, float32
        when it is silent.
        """
        given = self.raw.get("torch_dtype") or self.raw.get("dtype") or self.outer.get("torch_dtype")
        if self.engine == "transformers":
            name = given or "float32"
            if not isinstance(name, str) or name not in _TRANSFORMERS_DTYPES:
                raise UnsupportedModelError(f"{self.architecture}: unsupported model dtype {name!r}")
            return name
        name = given or "bfloat16"
        if not isinstance(name, str) or name not in _AUTO_DTYPE:
            raise UnsupportedModelError(f"{self.architecture}: unsupported model dtype {name!r}")
        return _AUTO_DTYPE[name]

    def head_dim(self, *keys: str) -> int:
        """Attention head size: the first of ``keys`` present, else hidden_size / heads."""
        for key in keys:
            if self.has(key):
                return self.get_int(key)
        return self.get_int("hidden_size") // self.get_int("num_attention_heads")

    def kv_heads(self) -> int:
        return self.get_int("num_key_value_heads", self.get_int("num_attention_heads"))
