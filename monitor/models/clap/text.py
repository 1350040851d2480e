"""Prompt tokenisation for the CLAP text encoder, with the ``tokenizers`` library only.

The export writes the checkpoint's fast tokenizer (``tokenizer.json``, RoBERTa byte-level
BPE with its ``<s> ... </s>`` post-processor) next to ``text_encoder.onnx``; this module
turns prompts into the padded ``input_ids`` / ``attention_mask`` int64 arrays the encoder
takes, exactly as ``tokenizer(prompts, padding=True)`` does in transformers. No transformers
at runtime. The ONNX session itself lives in ``monitor.models.clap.encoder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.errors import ModelError


@dataclass(frozen=True)
class TokenBatch:
    input_ids: np.ndarray  # int64 [P, T]
    attention_mask: np.ndarray  # int64 [P, T]


class PromptTokenizer:
    def __init__(self, path: str | Path, pad_token_id: int = 1, max_tokens: int = 512, suffix: str = ""):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover - a runtime dependency
            raise ModelError("the `tokenizers` package is missing: pip install tokenizers") from e
        p = Path(path)
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception
            raise ModelError(
                f"cannot load tokenizer {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        pad_token = tok.id_to_token(pad_token_id) or "<pad>"
        tok.enable_padding(pad_id=pad_token_id, pad_token=pad_token)
        tok.enable_truncation(max_length=max_tokens)
        self._tok = tok
        self.pad_token_id = pad_token_id
        self.max_tokens = max_tokens
        # text the model was trained to see after each prompt (msclap's GPT-2: " <|endoftext|>",
        # its end-of-text token, whose hidden state is the prompt's embedding)
        self.suffix = suffix

    def __call__(self, prompts: Sequence[str]) -> TokenBatch:
        if isinstance(prompts, str):
            raise TypeError("pass a sequence of prompts, not a single string")
        if not prompts:
            raise ValueError("no prompts to tokenise")
        enc = self._tok.encode_batch([p + self.suffix for p in prompts])
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        return TokenBatch(ids, mask)
