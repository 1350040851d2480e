"""The Hugging Face Hub, or the mirror that ``HF_ENDPOINT`` names: file metadata, resumable
verified downloads and ranged reads. The only module that imports ``huggingface_hub``.

huggingface_hub resolves a file (``HEAD /<repo>/resolve/<revision>/<path>``): the commit the
revision points at (``X-Repo-Commit``), the file's content hash (``X-Linked-Etag`` /
``ETag``: sha256 for LFS/xet files, the git blob sha1 for small ones), its size and where
to download it from (the redirect). The bytes themselves are read here with plain HTTP
``Range`` requests, so that

- a download interrupted by anything (a dead server, Ctrl-C, a full disk) resumes from the
  bytes already on disk the next time (huggingface_hub only retries within one call);
- every file is checked against the hash the hub states for the pinned commit before it
  is used, and a mismatch deletes it;
- a single tensor of a large safetensors checkpoint can be read without the file.

Errors are ``ModelError`` (exit 2, one line): hub unreachable, repository / revision /
file missing, disk full, checksum mismatch.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import ModelError

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
TIMEOUT_S = 30.0

Say = Callable[[str], None]


def endpoint() -> str:
    """The hub to talk to: ``HF_ENDPOINT`` (huggingface_hub's own variable) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def reachable(timeout_s: float = 2.0) -> bool:
    """Does the hub's host accept a TCP connection? (No request is made.)"""
    u = urllib.parse.urlsplit(endpoint())
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "", port), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    revision: str  # as asked (a pinned commit, normally)
    path: str
    commit: str  # the commit the hub resolved the revision to
    size: int | None
    etag: str | None  # sha256 (LFS/xet) or git blob sha1 (small files), as the hub states it
    location: str  # where the bytes are (after the hub's redirect)

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.revision[:12]}/{self.path}"


def _import_hub():
    try:
        import huggingface_hub
    except ImportError:  # pragma: no cover - a runtime dependency
        raise ModelError("huggingface_hub is not installed: pip install huggingface_hub") from None
    return huggingface_hub


def _names(e: BaseException) -> set[str]:
    return {c.__name__ for c in type(e).__mro__}


def _hub_error(e: BaseException, repo: str, revision: str, path: str) -> ModelError:
    """One line for whatever huggingface_hub raised (class names differ between its versions)."""
    names = _names(e)
    where = f"{endpoint()}"
    if "RevisionNotFoundError" in names:
        return ModelError(f"revision {revision} of {repo} not found on {where} (set another with --revision)")
    if names & {"EntryNotFoundError", "RemoteEntryNotFoundError"}:
        return ModelError(f"{path} not found in {repo} at revision {revision[:12]} on {where}")
    if names & {"RepositoryNotFoundError", "GatedRepoError"}:
        return ModelError(f"repository {repo} not found (or not public) on {where}")
    if names & {
        "ConnectError",
        "ConnectionError",
        "TimeoutException",
        "Timeout",
        "OfflineModeIsEnabled",
        "LocalEntryNotFoundError",
        "URLError",
        "gaierror",
        "RemoteProtocolError",
    }:
        return ModelError(f"the Hugging Face Hub at {where} cannot be reached ({type(e).__name__})")
    first = (str(e).splitlines() or [type(e).__name__])[0][:160]
    return ModelError(f"cannot get {repo}/{path} from {where}: {type(e).__name__}: {first}")


def file_info(repo: str, revision: str, path: str, timeout_s: float = 10.0) -> RemoteFile:
    hh = _import_hub()
    url = hh.hf_hub_url(repo, path, revision=revision, endpoint=endpoint())
    try:
        meta = hh.get_hf_file_metadata(url, timeout=timeout_s, endpoint=endpoint())
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        raise _hub_error(e, repo, revision, path) from None
    return RemoteFile(
        repo, revision, path, str(meta.commit_hash or ""), meta.size, (meta.etag or None), str(meta.location or url)
    )


def _headers(location: str) -> dict[str, str]:
    """The user's hub token (if any) for the hub itself, never for a CDN it redirects to."""
    hh = _import_hub()
    try:
        headers = dict(hh.utils.build_hf_headers())
    except Exception:  # noqa: BLE001 - no token configured, or an old huggingface_hub
        headers = {}
    if urllib.parse.urlsplit(location).netloc != urllib.parse.urlsplit(endpoint()).netloc:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    headers["Accept-Encoding"] = "identity"
    return headers


def _open(location: str, start: int, end: int | None = None):
    req = urllib.request.Request(location, headers=_headers(location))
    if start or end is not None:
        req.add_header("Range", f"bytes={start}-{'' if end is None else end}")
    return urllib.request.urlopen(req, timeout=TIMEOUT_S)  # the hub's https (or HF_ENDPOINT) URL


def read_range(f: RemoteFile, start: int, length: int) -> bytes:
    """``length`` bytes of ``f`` from ``start`` with one ranged request (never the whole file)."""
    if length <= 0:
        return b""
    try:
        with _open(f.location, start, start + length - 1) as r:
            if r.status != 206:
                raise ModelError(
                    f"{f.label}: the server ignored the byte range (HTTP {r.status}); cannot read a part of it"
                )
            data = r.read(length + 1)
    except ModelError:
        raise
    except (urllib.error.URLError, OSError) as e:
        raise ModelError(f"reading {f.label} failed ({type(e).__name__}: {e})") from None
    if len(data) != length:
        raise ModelError(f"{f.label}: asked for {length} bytes at {start}, got {len(data)}")
    return data


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # git's object id, not security
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, f: RemoteFile) -> str:
    """Check a downloaded file against the hub's hash; returns its sha256. Deletes it on mismatch."""
    from monitor.files import sha256_file

    sha256 = sha256_file(path)
    etag = (f.etag or "").strip('"').lower()
    got = path.stat().st_size
    if f.size is not None and got != f.size:
        path.unlink(missing_ok=True)
        raise ModelError(f"{f.label}: got {got} bytes, the hub says {f.size}; the download was deleted, fetch again")
    if len(etag) == 64:
        ok, kind = sha256 == etag, "sha256"
    elif len(etag) == 40:
        ok, kind = git_blob_sha1(path) == etag, "git sha1"
    else:
        raise ModelError(
            f"{f.label}: the hub gave no content hash (ETag {f.etag!r}); refusing an unverifiable download"
        )
    if not ok:
        path.unlink(missing_ok=True)
        raise ModelError(
            f"{f.label}: {kind} mismatch (the hub states {etag[:16]}…): the download was corrupt and "
            "was deleted; fetch again"
        )
    return sha256


def _fmt_mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def is_disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def download(f: RemoteFile, dest: Path, say: Say, progress_every_s: float = 2.0) -> str:
    """Download ``f`` to ``dest`` (resuming ``dest.part`` when a previous try left one for the
    same content), verify it and return its sha256. ``dest`` appears only when verified."""
    part = dest.with_name(dest.name + ".part")
    tag = dest.with_name(dest.name + ".part.json")
    want = {"etag": f.etag, "size": f.size, "commit": f.commit}
    have = 0
    if part.is_file():
        try:
            same = json.loads(tag.read_text()) == want
        except (OSError, ValueError):
            same = False
        if same:
            have = part.stat().st_size
        else:
            part.unlink()
    if f.size is not None and have > f.size:
        part.unlink()
        have = 0
    need = (f.size or 0) - have
    try:
        free = shutil.disk_usage(dest.parent).free
    except OSError:
        free = None
    if free is not None and need > free:
        raise ModelError(f"disk full: {f.path} needs {_fmt_mb(need)} more, {dest.parent} has {_fmt_mb(free)} free")
    total = f"/{_fmt_mb(f.size)}" if f.size else ""
    if have and (f.size is None or have < f.size):
        say(f"  {f.path}: resuming at {_fmt_mb(have)}{total}")
    else:
        say(f"  {f.path}: {_fmt_mb(f.size) if f.size else 'size unknown'}")
    try:
        tag.write_text(json.dumps(want))
        if f.size is None or have < f.size:
            _stream(f, part, have, say, progress_every_s)
        os.replace(part, dest)
        tag.unlink(missing_ok=True)
    except OSError as e:
        if is_disk_full(e):
            raise ModelError(
                f"disk full while writing {part} ({e.strerror}); free space and fetch again "
                "(it resumes where it stopped)"
            ) from None
        raise ModelError(f"cannot write {part}: {e}") from None
    return verify(dest, f)


def _stream(f: RemoteFile, part: Path, have: int, say: Say, every_s: float) -> None:
    t0 = last = time.monotonic()
    got = 0
    try:
        with _open(f.location, have) as r:
            if have and r.status != 206:
                have = 0  # the server ignored the range: start over
            with open(part, "ab" if have else "wb") as out:
                while True:
                    block = r.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    got += len(block)
                    now = time.monotonic()
                    if now - last >= every_s:
                        last = now
                        done = have + got
                        pct = f" {100 * done / f.size:.0f} %" if f.size else ""
                        say(
                            f"  {f.path}: {_fmt_mb(done)}{'/' + _fmt_mb(f.size) if f.size else ''}{pct}, "
                            f"{_fmt_mb(got / max(now - t0, 1e-3))}/s"
                        )
    except urllib.error.HTTPError as e:
        raise ModelError(f"downloading {f.label} failed: HTTP {e.code} {e.reason}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
        raise ModelError(
            f"downloading {f.label} stopped after {_fmt_mb(have + got)} ({type(e).__name__}: "
            f"{getattr(e, 'reason', e)}); fetch again to resume"
        ) from None
    except OSError:
        raise  # writing the .part file (a full disk among others): download() reports it
    except Exception as e:  # http.client.IncompleteRead and friends: a server that went away
        if type(e).__module__.startswith("http"):
            raise ModelError(
                f"downloading {f.label} stopped after {_fmt_mb(have + got)} ({type(e).__name__}); fetch again to resume"
            ) from None
        raise
    dt = max(time.monotonic() - t0, 1e-3)
    if f.size is not None and have + got != f.size:
        raise ModelError(
            f"downloading {f.label} stopped at {_fmt_mb(have + got)} of {_fmt_mb(f.size)}; fetch again to resume"
        )
    say(f"  {f.path}: {_fmt_mb(have + got)} in {dt:.1f} s ({_fmt_mb(got / dt)}/s)")
