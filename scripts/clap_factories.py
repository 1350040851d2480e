"""Factories of CLAP checkpoints for tests and benchmarks, outside the runtime package: the
Hugging Face Hub is not reachable on the build machines (../shared/MODELS.md says how).

- ``make_random_checkpoint``: a randomly initialised ``ClapModel`` + ``ClapProcessor`` saved
  with ``save_pretrained`` (tiny for tests, or the full ``ClapConfig()`` architecture for
  benchmarks; byte-level BPE tokenizer trained here, weights re-drawn with a larger std so
  that scores differ);
- ``make_transformersjs_layout``: a checkpoint laid out as the transformers.js conversion
  (``Xenova/clap-htsat-unfused``) is, for the hub stand-in that tests ``models fetch clap``.

Needs the export extra (torch, transformers, onnx). Tests import it through tests/conftest.py
(which puts scripts/ on the path); the benchmark scripts import it directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from monitor.models.clap.export import onnx_export
from monitor.models.clap.graph import quantise_dynamic_int8

_TOKENIZER_CORPUS = [
    "This is a sound of {}.",
    "a dog barking, a cat meowing, a cow mooing, a duck quacking, a frog croaking",
    "a horse neighing, an owl hooting, a pig oinking, a rooster crowing, a sheep bleating",
    "smoke alarm, glass breaking, door knock, baby crying, speech, music, silence, rain",
    "background noise, room tone, people talking in the distance, traffic noise, wind",
    "the sound of an engine, a siren, footsteps, applause, water running, thunder",
]


def make_random_checkpoint(
    out_dir: str | os.PathLike, size: str = "tiny", seed: int = 0, init_gain: float = 1.0
) -> Path:
    """Build a randomly initialised CLAP + ClapProcessor in Hugging Face format.

    ``size="tiny"``: a few-hundred-kB model for tests (spec_size stays 256 with 64 mel bins).
    ``size="full"``: ``ClapConfig()`` defaults, the laion/clap-htsat-unfused architecture.
    ``size="larger-tiny"`` / ``"larger-full"``: laion/larger_clap_general's shape, small / real.
    Weight matrices are re-drawn with std ``init_gain / sqrt(fan_in)`` so that different
    prompts and clips embed differently (the default std 0.02 makes every score equal).
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    corpus = [line.replace("{}", "x") for line in _TOKENIZER_CORPUS]
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as RoBERTa
    bpe.train_from_iterator(
        corpus, vocab_size=400 if size == "tiny" else 1000, min_frequency=1, special_tokens=specials
    )
    tokenizer = RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    vocab = len(tokenizer)
    # the small text tower of the tiny sizes (the audio towers differ)
    small_text = dict(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        projection_dim=32,
    )
    if size == "tiny":
        config = ClapConfig(
            text_config=small_text,
            audio_config=dict(
                patch_embeds_hidden_size=16,
                hidden_size=128,  # 16 * 2 ** (len(depths) - 1)
                depths=[1, 1, 1, 1],
                num_attention_heads=[1, 2, 2, 4],
                projection_dim=32,
            ),
            projection_dim=32,
        )
    elif size == "larger-tiny":
        # laion/larger_clap_general's shape, small: a deeper third stage (2-2-12-2 there) and
        # a wider patch embedding (128 there, hidden = patch * 8)
        config = ClapConfig(
            text_config=small_text,
            audio_config=dict(
                patch_embeds_hidden_size=24,
                hidden_size=192,
                depths=[1, 1, 3, 1],
                num_attention_heads=[1, 2, 2, 4],
                projection_dim=32,
            ),
            projection_dim=32,
        )
    elif size == "full":
        config = ClapConfig(text_config=dict(vocab_size=vocab))
    elif size == "larger-full":  # laion/larger_clap_general's architecture (its config.json)
        config = ClapConfig(
            text_config=dict(vocab_size=vocab),
            audio_config=dict(depths=[2, 2, 12, 2], hidden_size=1024, patch_embeds_hidden_size=128),
        )
    else:
        raise ValueError(f"size must be 'tiny', 'full', 'larger-tiny' or 'larger-full', got {size!r}")
    torch.manual_seed(seed)
    model = ClapModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("logit_scale"):
                # not the init value 1/0.07: a reader that ignored the checkpoint would be caught
                p.fill_(float(np.log(12.0 + 24.0 * np.random.default_rng(seed + len(name)).random())))
                continue
            if "relative_position_bias_table" in name:
                p.normal_(0.0, 0.5)
            elif p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.normal_(0.0, init_gain / max(fan_in, 1) ** 0.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)
    model.save_pretrained(out)
    fe = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad", frequency_min=50, frequency_max=14000)
    ClapProcessor(feature_extractor=fe, tokenizer=tokenizer).save_pretrained(out)
    return out


JS_ROOT_FILES = (
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def make_transformersjs_layout(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, quantized: bool = True) -> Path:
    """Lay a Hugging Face CLAP checkpoint out as the transformers.js conversion does
    (``Xenova/clap-htsat-unfused``): ``onnx/audio_model.onnx`` (``input_features`` ->
    ``audio_embeds`` + ``last_hidden_state``, not normalised), ``onnx/text_model.onnx``
    (``input_ids``, ``attention_mask`` -> ``text_embeds`` + ``last_hidden_state``), their
    ``*_quantized.onnx`` forms (dynamic uint8 weights), and the tokenizer / config /
    preprocessor files at the root. For tests and benchmarks of ``models fetch clap``: the
    hub is not reachable from the build machines, so this stands in for the real repository.
    """
    import shutil

    import torch
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    src, out = Path(ckpt_dir), Path(out_dir)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    model = ClapModel.from_pretrained(str(src)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(src))

    class Audio(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_features):
            o = self.m.audio_model(input_features=input_features)
            return self.m.audio_projection(o.pooler_output), o.last_hidden_state

    class Text(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            o = self.m.text_model(input_ids=input_ids, attention_mask=attention_mask)
            return self.m.text_projection(o.pooler_output), o.last_hidden_state

    fe = ClapFeatureExtractor.from_pretrained(str(src))
    n_frames = int(fe.max_length_s * fe.sampling_rate) // fe.hop_length + 1
    feats = torch.randn(2, 1, n_frames, int(fe.feature_size))
    enc = tokenizer(["This is a sound of a dog.", "rain"], padding=True, return_tensors="pt")
    onnx_export(
        Audio(model).eval(),
        (feats,),
        out / "onnx" / "audio_model.onnx",
        ["input_features"],
        ["audio_embeds", "last_hidden_state"],
        {
            "input_features": {0: "batch_size"},
            "audio_embeds": {0: "batch_size"},
            "last_hidden_state": {0: "batch_size"},
        },
    )
    onnx_export(
        Text(model).eval(),
        (enc["input_ids"], enc["attention_mask"]),
        out / "onnx" / "text_model.onnx",
        ["input_ids", "attention_mask"],
        ["text_embeds", "last_hidden_state"],
        {
            "input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "sequence_length"},
            "text_embeds": {0: "batch_size"},
            "last_hidden_state": {0: "batch_size", 1: "sequence_length"},
        },
    )
    if quantized:
        for name in ("audio_model", "text_model"):
            quantise_dynamic_int8(
                out / "onnx" / f"{name}.onnx", out / "onnx" / f"{name}_quantized.onnx", unsigned_weights=True
            )
    model.config.to_json_file(str(out / "config.json"))
    fe.to_json_file(str(out / "preprocessor_config.json"))
    tokenizer.save_pretrained(str(out / ".tok"))
    for name in JS_ROOT_FILES[2:]:
        if (out / ".tok" / name).is_file():
            shutil.copy(out / ".tok" / name, out / name)
    shutil.rmtree(out / ".tok")
    return out


# --------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------
