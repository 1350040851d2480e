"""Randomly initialised Microsoft CLAP (msclap) models, built offline for the tests.

The text models are tiny (one layer) but keep msclap's 768-wide hidden state (its text
projection expects 768); their tokenizers are made here: a byte-level BPE for GPT-2 (the 256
byte symbols in GPT-2's order, so "!" is id 0 as msclap's padding expects, a few merges and
"<|endoftext|>") and a WordPiece vocabulary for BERT. The audio encoders are msclap's own,
full size (HTSAT for 2023, Cnn14 for 2022), with random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = (
    "this is a sound of dog barking rain silence smoke alarm glass breaking baby crying door knock "
    "speech music water running engine siren footsteps the an and"
).split()


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in its vocabulary order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = [chr(b) for b in keep]
    extra = 0
    for b in range(256):
        if b not in keep:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_gpt2_dir(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GPT2Config, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(_bytes_to_unicode())}
    merges = [("Ġ", "a"), ("Ġ", "s"), ("o", "u"), ("Ġs", "ou"), ("n", "d"), ("Ġsou", "nd")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    eot = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot)
    fast.add_special_tokens({"additional_special_tokens": [eot]})
    fast.save_pretrained(str(path))
    n_vocab = len(fast)
    GPT2Config(
        vocab_size=n_vocab,
        n_positions=128,
        n_embd=768,
        n_layer=1,
        n_head=4,
        bos_token_id=fast.convert_tokens_to_ids(eot),
        eos_token_id=fast.convert_tokens_to_ids(eot),
    ).save_pretrained(str(path))
    return path


def tiny_bert_dir(path: Path) -> Path:
    from transformers import BertConfig, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,!?'-", *letters, *(f"##{c}" for c in letters), *WORDS]
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(path))
    BertConfig(
        vocab_size=len(tok),
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=128,
    ).save_pretrained(str(path))
    return path


def text_dir(version: str, path: Path) -> Path:
    return tiny_gpt2_dir(path) if version == "2023" else tiny_bert_dir(path)


def hub_layout(root: Path, version: str, seed: int = 0) -> dict[str, Path]:
    """Folders for a hub stand-in: microsoft/msclap with a random checkpoint of ``version``,
    and the text model's repo with its config and tokenizer (no weights)."""
    from monitor.models.clap.msclap_export import VERSIONS, make_random_msclap

    v = VERSIONS[version]
    text = text_dir(version, root / v.text_repo.replace("/", "--"))
    weights = make_random_msclap(root / "msclap" / v.weights, version, text, seed=seed)
    (root / "msclap" / "README.md").write_text("random msclap weights for tests\n")
    return {"microsoft/msclap": weights.parent, v.text_repo: text}


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())
