"""A local stand-in for the Hugging Face Hub (the real one is not reachable from the build
machines): a threaded HTTP server on 127.0.0.1 that serves repositories from folders.

It answers as the hub does where huggingface_hub and ``monitor.models.hub`` look:
- ``HEAD``/``GET /<owner>/<name>/resolve/<revision>/<path>`` with ``X-Repo-Commit``; small
  files directly (``ETag`` = git blob sha1); large files (``*.onnx``, ``*.safetensors``)
  by a 302 to ``http://localhost:<port>/cdn/<sha256>`` (another host, like the CDN) with ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``;
- ``Range: bytes=a-b`` / ``a-`` -> 206 with ``Content-Range``; ``Accept-Ranges: bytes``;
- ``GET /api/models/<owner>/<name>/revision/<revision>`` -> the repo's commit and file list,
  and ``.../tree/<revision>`` -> its files (what ``snapshot_download`` asks before the files);
- misses as 404 with ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``.

Faults for tests: ``die_after[path] = n`` sends the full ``Content-Length`` then only ``n``
bytes and closes the connection (a server that dies mid-file); ``corrupt.add(path)``
serves the file with one byte changed (its stated hash stays the right one). Every request
is logged in ``requests`` as ``(method, repo_path_or_cdn, range_header)``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LARGE = (".onnx", ".safetensors", ".pth")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStub:
    def __init__(self) -> None:
        self.repos: dict[str, tuple[str, Path]] = {}  # repo id -> (commit, folder)
        self.die_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        self._blobs: dict[str, Path] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url = ""

    def add_repo(self, repo: str, commit: str, folder: Path) -> None:
        self.repos[repo] = (commit, Path(folder))
        for f in Path(folder).rglob("*"):
            if f.is_file() and f.suffix in LARGE:
                self._blobs[hashlib.sha256(f.read_bytes()).hexdigest()] = f

    @property
    def url(self) -> str:
        """The server's address (still known after ``stop``: a closed port to test against)."""
        assert self._url, "not started"
        return self._url

    def start(self) -> HubStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                stub._handle(self, head=True)

            def do_GET(self):
                stub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubStub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------
    def _miss(self, h, code: str, commit: str | None = None) -> None:
        h.send_response(404)
        h.send_header("X-Error-Code", code)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _handle(self, h, head: bool) -> None:
        rng = h.headers.get("Range")
        m = re.fullmatch(r"/cdn/([0-9a-f]{64})", h.path)
        if m:
            self.requests.append((h.command, h.path, rng))
            f = self._blobs.get(m.group(1))
            if f is None:
                return self._miss(h, "EntryNotFound")
            rel = next(f"{r}/{f.relative_to(d).as_posix()}" for r, (c, d) in self.repos.items() if d in f.parents)
            return self._send(h, f, head, rng, rel.split("/", 2)[2], etag=None, commit=None)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/?]+)(\?.*)?", h.path)
        if m:
            self.requests.append((h.command, h.path, rng))
            repo, what, rev = m.group(1), m.group(2), m.group(3)
            if repo not in self.repos:
                return self._miss(h, "RepoNotFound")
            commit, folder = self.repos[repo]
            if rev not in (commit, "main"):
                return self._miss(h, "RevisionNotFound")
            files = sorted(f for f in folder.rglob("*") if f.is_file())
            names = [f.relative_to(folder).as_posix() for f in files]
            if what == "revision":
                info: object = {"id": repo, "sha": commit, "siblings": [{"rfilename": n} for n in names]}
            else:
                info = [
                    {"type": "file", "path": n, "size": f.stat().st_size, "oid": git_sha1(f.read_bytes())}
                    for n, f in zip(names, files)
                ]
            body = json.dumps(info).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if not head:
                h.wfile.write(body)
            return
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", h.path)
        if not m:
            return self._miss(h, "RepoNotFound")
        repo, rev, path = m.groups()
        self.requests.append((h.command, f"{repo}/{path}", rng))
        if repo not in self.repos:
            return self._miss(h, "RepoNotFound")
        commit, folder = self.repos[repo]
        if rev not in (commit, "main"):
            return self._miss(h, "RevisionNotFound")
        f = folder / path
        if not f.is_file() or ".." in path:
            return self._miss(h, "EntryNotFound", commit)
        data_sha = hashlib.sha256(f.read_bytes()).hexdigest()
        if f.suffix in LARGE:
            h.send_response(302)
            # another host name, as the hub's CDN is: huggingface_hub follows only same-host redirects
            h.send_header("Location", f"{self.url.replace('127.0.0.1', 'localhost')}/cdn/{data_sha}")
            h.send_header("X-Repo-Commit", commit)
            h.send_header("X-Linked-Etag", f'"{data_sha}"')
            h.send_header("X-Linked-Size", str(f.stat().st_size))
            h.send_header("ETag", f'"{git_sha1(data_sha.encode())}"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        return self._send(h, f, head, rng, path, etag=git_sha1(f.read_bytes()), commit=commit)

    def _send(self, h, f: Path, head: bool, rng: str | None, path: str, etag: str | None, commit: str | None) -> None:
        data = f.read_bytes()
        if path in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start, end, status = 0, len(data) - 1, 200
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start = int(m.group(1))
                end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
                status = 206
        body = data[start : end + 1]
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        if etag:
            h.send_header("ETag", f'"{etag}"')
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.end_headers()
        if head:
            return
        cut = self.die_after.get(path)
        if cut is not None and start < cut:
            h.wfile.write(body[: cut - start])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(body)
