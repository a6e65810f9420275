"""A minimal Docker Registry HTTP API V2 server for tests, bound to 127.0.0.1.

No outside registry is reachable from the test machine, so tests that exercise real
`docker pull`s publish images exported from the local engine here instead. The engine
treats registries on 127.0.0.0/8 as insecure by default, so plain HTTP works.

Only the read side of the API is implemented (what a pull needs): `GET /v2/`, manifests
and blobs. Publishing happens in-process through `push_local` / `push_archive`.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from typing import IO, Any

import docker
from aiohttp import web

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_image_archive(archive: IO[bytes]) -> tuple[bytes, list[bytes]]:
    """Return (config JSON, layer blobs as stored) of the one image in a `docker save` tar.

    Docker's `manifest.json` is present in both the legacy layout (`<id>/layer.tar`,
    `<imageid>.json`) and the OCI layout newer engines write (`blobs/sha256/<hex>`), and its
    paths resolve either way. Only an OCI archive without it falls back to `index.json`.
    """
    with tarfile.open(fileobj=archive, mode="r") as tar:
        names = set(tar.getnames())

        def read(name: str) -> bytes:
            member = tar.extractfile(name)  # follows in-archive symlinks (shared layers)
            if member is None:
                raise ValueError(f"{name} is not a file in the image archive")
            return member.read()

        if "manifest.json" in names:
            entry = json.loads(read("manifest.json"))[0]
            return read(entry["Config"]), [read(path) for path in entry["Layers"]]

        def blob_path(digest: str) -> str:
            return "blobs/" + digest.replace(":", "/")

        doc: dict[str, Any] = {"manifests": json.loads(read("index.json"))["manifests"]}
        while "manifests" in doc:  # (nested) indexes: take the first entry actually exported
            present = [d for d in doc["manifests"] if blob_path(d["digest"]) in names]
            if not present:
                raise ValueError("no image manifest in the OCI archive")
            doc = json.loads(read(blob_path(present[0]["digest"])))
        layers = [read(blob_path(layer["digest"])) for layer in doc["layers"]]
        return read(blob_path(doc["config"]["digest"])), layers


def gzip_layer(layer: bytes) -> bytes:
    """Gzip an uncompressed layer tar; already-gzipped blobs (containerd store) pass through.

    mtime=0 keeps the output, and so the blob digest, stable for identical layers.
    """
    if layer[:2] == b"\x1f\x8b":
        return layer
    return gzip.compress(layer, compresslevel=6, mtime=0)


@dataclass
class _Repo:
    manifests: dict[str, bytes] = field(default_factory=dict)  # tag or digest -> manifest
    blobs: set[str] = field(default_factory=set)


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"errors": [{"code": code, "message": message, "detail": None}]}
    return web.json_response(body, status=status)


class LocalRegistry:
    """Serves images exported from the local engine over the Registry V2 API on 127.0.0.1.

    The HTTP server runs on its own event loop in a daemon thread: pulls are driven by
    blocking docker-py calls, and a server on the test's loop would deadlock whenever that
    loop is blocked by such a call or simply not running (any sync test).
    """

    def __init__(self, *, throttle_bytes_per_s: int | None = None) -> None:
        self.throttle_bytes_per_s = throttle_bytes_per_s
        self.address = ""
        # "repo:tag" each time a tag is resolved (HEAD or GET), i.e. once per pull.
        self.pulls: list[str] = []
        # Answer 500 to the next N manifest lookups (a HEAD and its GET retry count as one).
        self.fail_next = 0
        self._failed_head: tuple[str, str] | None = None
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, bytes] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> LocalRegistry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="local-registry", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._serve(), self._loop))

    async def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            )
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()
        self._loop = self._thread = self._runner = None

    async def _serve(self) -> None:
        app = web.Application()
        app.on_response_prepare.append(self._add_api_header)
        app.router.add_get("/v2/", self._ping)  # add_get also answers HEAD
        app.router.add_get(r"/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_get(r"/v2/{name:.+}/blobs/{digest}", self._blob)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.address = f"{host}:{port}"

    @staticmethod
    async def _add_api_header(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[API_VERSION[0]] = API_VERSION[1]

    async def _ping(self, _request: web.Request) -> web.Response:
        return web.json_response({})

    async def _manifest(self, request: web.Request) -> web.Response:
        name, ref = request.match_info["name"], request.match_info["ref"]
        # The engine retries a failed HEAD as a GET of the same reference; failing that
        # fallback too, without counting it, makes fail_next=N break exactly N pulls.
        fallback = request.method == "GET" and self._failed_head == (name, ref)
        self._failed_head = None
        if fallback or self.fail_next > 0:
            if not fallback:
                self.fail_next -= 1
                if request.method == "HEAD":
                    self._failed_head = (name, ref)
            return _error(500, "UNKNOWN", "injected failure (LocalRegistry.fail_next)")
        repo = self._repos.get(name)
        if repo is None:
            return _error(404, "NAME_UNKNOWN", f"repository {name} not known to registry")
        manifest = repo.manifests.get(ref)
        if manifest is None:
            return _error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {name}:{ref}")
        # The engine resolves a tag with HEAD and GETs the manifest by digest only when its
        # own content store lacks it, so a repeat pull may never GET. Count each resolution
        # of a tag (HEAD or GET) instead: exactly one per `docker pull repo:tag`.
        if not ref.startswith("sha256:"):
            self.pulls.append(f"{name}:{ref}")
        headers = {"Docker-Content-Digest": sha256_digest(manifest)}
        return web.Response(body=manifest, content_type=MANIFEST_V2, headers=headers)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        name, digest = request.match_info["name"], request.match_info["digest"]
        repo = self._repos.get(name)
        if repo is None:
            return _error(404, "NAME_UNKNOWN", f"repository {name} not known to registry")
        data = self._blobs.get(digest) if digest in repo.blobs else None
        if data is None:
            return _error(404, "BLOB_UNKNOWN", f"blob unknown to registry: {digest}")
        response = web.StreamResponse(headers={"Docker-Content-Digest": digest})
        response.content_type = "application/octet-stream"
        response.content_length = len(data)
        await response.prepare(request)
        if request.method == "GET":
            rate = self.throttle_bytes_per_s
            # ~20 chunks a second so the engine sees a steady trickle, not bursts.
            step = max(1024, rate // 20) if rate else len(data) or 1
            for start in range(0, len(data), step):
                await response.write(data[start : start + step])
                if rate:
                    await asyncio.sleep(step / rate)
        await response.write_eof()
        return response

    def push_archive(self, archive: IO[bytes], repo: str, tag: str = "latest") -> str:
        """Publish the image in a `docker save` tar as `{address}/{repo}:{tag}`."""
        if not self.address:
            raise RuntimeError("LocalRegistry.start() must run before publishing")
        config, layers = read_image_archive(archive)
        blobs = [gzip_layer(layer) for layer in layers]
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {
                "mediaType": CONFIG_V1,
                "size": len(config),
                "digest": sha256_digest(config),
            },
            "layers": [
                {"mediaType": LAYER_GZIP, "size": len(blob), "digest": sha256_digest(blob)}
                for blob in blobs
            ],
        }
        body = json.dumps(manifest, indent=3).encode()
        entry = self._repos.setdefault(repo, _Repo())
        # Blobs first, manifest last: the server thread may be answering requests meanwhile.
        for blob in [config, *blobs]:
            self._blobs[sha256_digest(blob)] = blob
            entry.blobs.add(sha256_digest(blob))
        entry.manifests[sha256_digest(body)] = body
        entry.manifests[tag] = body
        return f"{self.address}/{repo}:{tag}"

    def push_local(self, image: str, repo: str, tag: str = "latest") -> str:
        """Export `image` from the local engine and publish it; returns the full reference.

        Blocking (docker save + gzip): call it from test setup, not from request handlers.
        """
        client = docker.from_env(timeout=120)
        try:
            with tempfile.TemporaryFile() as spool:
                for chunk in client.images.get(image).save():
                    spool.write(chunk)
                spool.seek(0)
                return self.push_archive(spool, repo, tag)
        finally:
            client.close()
