"""The model folder's contract: ``manifest.json`` of an exported or fetched CLAP.

One type (``ClapManifest``) for the three writers — ``export`` (LAION CLAP), the Microsoft
CLAP export and ``models fetch clap`` — and for the reader, the encoder. What the runtime
needs is typed and checked when the folder is read (a manifest without it is one error that
names the file); everything else a writer records (where it came from, the measured
differences, the exporter) is kept as written, under the same keys as before.

``write`` is the one place a manifest reaches the disk: it lists the sha256 of every file in
the folder (hashes a writer already knows are reused: fetched files are verified against the
hub while they download) and replaces the file atomically, last, so a folder without
``manifest.json`` is one whose export or fetch did not finish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from monitor.errors import ModelError
from monitor.files import read_manifest, sha256_file, write_json_atomic

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
# kept beside the model by the runtime, not part of it (model.int8: auto's decision per machine)
RUNTIME_FILES = frozenset({"int8-choice.json"})
_TYPED = ("kind", "format_version", "name", "source", "sample_rate", "window_s", "embedding_dim", "logit_scale")
_SECTIONS = ("audio", "text", "frontend")


@dataclass(frozen=True)
class ClapManifest:
    name: str
    source: str
    sample_rate: int
    window_s: float
    embedding_dim: int
    logit_scale: float
    audio: Mapping[str, Any]  # file, int8_file, optimized {file: optimised file}, input, output, ...
    text: Mapping[str, Any]  # file, tokenizer, pad_token_id, max_tokens, suffix, ...
    frontend: Mapping[str, Any]  # FrontendParams.to_dict()
    files: Mapping[str, str] = field(default_factory=dict)  # name -> sha256 (``write`` fills it)
    kind: str = "clap"
    format_version: int = MANIFEST_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)  # provenance and checks, as written

    # -- reading ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | Path = MANIFEST_FILE) -> ClapManifest:
        """The typed manifest, or a ModelError that names ``where`` and what is wrong."""

        def bad(what: str) -> ModelError:
            return ModelError(f"{where} is incomplete or invalid ({what})")

        if data.get("kind", "clap") != "clap":
            raise ModelError(f"{where} does not describe a CLAP export (kind={data.get('kind')!r})")
        try:
            m = cls(
                name=str(data.get("name") or ""),
                source=str(data.get("source", "")),
                sample_rate=int(data["sample_rate"]),
                window_s=float(data.get("window_s", 5.0)),
                embedding_dim=int(data["embedding_dim"]),
                logit_scale=float(data["logit_scale"]),
                audio=dict(data["audio"]),
                text=dict(data["text"]),
                frontend=dict(data["frontend"]),
                files={str(k): str(v) for k, v in dict(data.get("files") or {}).items()},
                format_version=int(data.get("format_version", MANIFEST_VERSION)),
                extra={k: v for k, v in data.items() if k not in (*_TYPED, *_SECTIONS, "files")},
            )
        except KeyError as e:
            raise bad(f"no {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise bad(f"{type(e).__name__}: {e}") from None
        if m.sample_rate <= 0 or m.embedding_dim <= 0 or m.window_s <= 0 or not m.logit_scale > 0:
            raise bad("sample_rate, window_s, embedding_dim and logit_scale must be positive")
        for section, key in (("audio", "file"), ("text", "file"), ("text", "tokenizer")):
            if not isinstance(getattr(m, section).get(key), str):
                raise bad(f"{section}.{key} is not a file name")
        if m.format_version > MANIFEST_VERSION:
            raise bad(f"format_version {m.format_version} is newer than this program's {MANIFEST_VERSION}: update")
        return m

    @classmethod
    def read(cls, folder: Path, hint: str = "") -> ClapManifest:
        path = folder / MANIFEST_FILE
        return cls.from_dict(read_manifest(path, hint), path)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the keys every earlier version wrote)."""
        return {
            "kind": self.kind,
            "format_version": self.format_version,
            "name": self.name,
            "source": self.source,
            "sample_rate": self.sample_rate,
            "window_s": self.window_s,
            "embedding_dim": self.embedding_dim,
            "logit_scale": self.logit_scale,
            **self.extra,
            "audio": dict(self.audio),
            "text": dict(self.text),
            "frontend": dict(self.frontend),
            "files": dict(self.files),
        }

    # -- writing (the one writer) -------------------------------------------------------------
    def write(self, folder: Path, known: Mapping[str, str] | None = None) -> ClapManifest:
        """List every file of ``folder`` (but the manifest and hidden ones) with its sha256
        (``known`` ones reused) and write ``manifest.json`` atomically; -> what was written."""
        known = known or {}
        names = sorted(
            p.name
            for p in folder.iterdir()
            if p.is_file() and p.name != MANIFEST_FILE and p.name not in RUNTIME_FILES and not p.name.startswith(".")
        )
        files = {n: known.get(n) or sha256_file(folder / n) for n in names}
        done = replace(self, files=files)
        write_json_atomic(folder / MANIFEST_FILE, done.to_dict())
        return done
