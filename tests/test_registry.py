"""LocalRegistry against the real engine: what it publishes, `docker pull` really fetches."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import tarfile
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import docker
import docker.errors
import pytest

from tests.images import Images, PullError
from tests.registry import LocalRegistry, read_image_archive, sha256_digest

pytestmark = pytest.mark.docker


def unique_repo() -> str:
    return f"peon-test/reg-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def registry(engine: None) -> AsyncIterator[LocalRegistry]:
    async with LocalRegistry() as reg:
        yield reg


def test_pull_runs_and_keeps_image_id(
    registry: LocalRegistry, images: Images, dclient: docker.DockerClient
) -> None:
    src, src_id = images.build()
    repo = unique_repo()
    ref = registry.push_local(src, repo, "v1")
    assert ref == f"{registry.address}/{repo}:v1"
    assert registry.address.startswith("127.0.0.1:")
    images.drop(src)

    events = images.pulled(ref)

    assert any(e.get("status") == "Pull complete" for e in events), events
    assert dclient.images.get(ref).id == src_id  # config bytes served verbatim
    out = dclient.containers.run(ref, ["echo", "hi"], remove=True, network_mode="none")
    assert out == b"hi\n"
    assert registry.pulls == [f"{repo}:v1"]


def test_moved_tag_pulls_the_new_image(
    registry: LocalRegistry, images: Images, dclient: docker.DockerClient
) -> None:
    old, old_id = images.build()
    new, new_id = images.build()
    assert old_id != new_id
    repo = unique_repo()
    ref = registry.push_local(old, repo)
    images.drop(old)
    images.pulled(ref)
    assert dclient.images.get(ref).id == old_id

    assert registry.push_local(new, repo) == ref
    images.drop(new)
    images.pulled(ref)

    assert dclient.images.get(ref).id == new_id
    out = dclient.containers.run(ref, ["echo", "new"], remove=True, network_mode="none")
    assert out == b"new\n"
    assert registry.pulls == [f"{repo}:latest"] * 2


def test_throttle_shows_download_progress(images: Images, dclient: docker.DockerClient) -> None:
    size, rate = 400_000, 250_000  # random bytes do not compress: ~1.6 s on the wire
    src, src_id = images.build(payload=size)
    slow = LocalRegistry(throttle_bytes_per_s=rate)
    # A sync test can drive start/close itself: the server runs on its own loop and thread.
    asyncio.run(slow.start())
    try:
        ref = slow.push_local(src, unique_repo())
        images.drop(src)
        started = time.monotonic()
        events = images.pulled(ref)
        elapsed = time.monotonic() - started
    finally:
        asyncio.run(slow.close())

    progress = [e["progressDetail"] for e in events if e.get("status") == "Downloading"]
    assert len(progress) >= 2, events
    assert all(0 < p["current"] <= p["total"] for p in progress), progress
    assert max(p["total"] for p in progress) >= size
    assert elapsed >= size / rate * 0.8
    assert dclient.images.get(ref).id == src_id


def test_fail_next_breaks_one_pull(
    registry: LocalRegistry, images: Images, dclient: docker.DockerClient
) -> None:
    src, src_id = images.build()
    ref = registry.push_local(src, unique_repo())
    images.drop(src)
    registry.fail_next = 1

    with pytest.raises((docker.errors.APIError, PullError)) as failed:
        images.pulled(ref)

    assert "500" in str(failed.value), failed.value
    assert registry.fail_next == 0
    assert registry.pulls == []
    with pytest.raises(docker.errors.ImageNotFound):
        dclient.images.get(ref)
    images.pulled(ref)  # one failure asked for, one pull broken
    assert dclient.images.get(ref).id == src_id


def test_missing_tag_is_not_found(registry: LocalRegistry, images: Images) -> None:
    src, _ = images.build()
    repo = unique_repo()
    registry.push_local(src, repo)
    missing = f"{registry.address}/{repo}:no-such-tag"

    with pytest.raises((docker.errors.APIError, PullError)) as failed:
        images.pulled(missing)

    assert "not found" in str(failed.value), failed.value
    assert "manifest unknown" in str(failed.value), failed.value
    assert registry.pulls == []


async def test_http_routes(registry: LocalRegistry, images: Images) -> None:
    src, src_id = images.build()
    repo = unique_repo()
    registry.push_local(src, repo, "v1")
    base = f"http://{registry.address}/v2"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as resp:
            assert resp.status == 200
            assert await resp.json() == {}
            assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        async with http.head(f"{base}/{repo}/manifests/v1") as resp:
            assert resp.status == 200
            digest = resp.headers["Docker-Content-Digest"]
        async with http.get(f"{base}/{repo}/manifests/{digest}") as resp:
            assert resp.content_type == "application/vnd.docker.distribution.manifest.v2+json"
            body = await resp.read()
        assert sha256_digest(body) == digest
        manifest = json.loads(body)
        assert manifest["schemaVersion"] == 2
        assert manifest["config"]["digest"] == src_id
        layer = manifest["layers"][0]
        assert layer["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
        async with http.head(f"{base}/{repo}/blobs/{layer['digest']}") as resp:
            assert resp.status == 200
            assert resp.content_length == layer["size"]
            assert resp.headers["Docker-Content-Digest"] == layer["digest"]
        async with http.get(f"{base}/{repo}/blobs/{layer['digest']}") as resp:
            blob = await resp.read()
        assert sha256_digest(blob) == layer["digest"]
        config = await (await http.get(f"{base}/{repo}/blobs/{src_id}")).json(content_type=None)
        assert config["rootfs"]["diff_ids"][0] == sha256_digest(gzip.decompress(blob))

        for path, code in [
            (f"{repo}/manifests/nope", "MANIFEST_UNKNOWN"),
            (f"{repo}/blobs/sha256:{'0' * 64}", "BLOB_UNKNOWN"),
            ("peon-test/unknown/manifests/v1", "NAME_UNKNOWN"),
        ]:
            async with http.get(f"{base}/{path}") as resp:
                assert resp.status == 404
                assert (await resp.json())["errors"][0]["code"] == code


def oci_archive(saved: bytes) -> bytes:
    """Rewrite a `docker save` tar in OCI layout, as newer engines write it, but without
    docker's manifest.json (the fallback path) and with the first layer already gzipped
    (as the containerd image store keeps layers)."""
    config, layers = read_image_archive(io.BytesIO(saved))
    blobs = [gzip.compress(layers[0], mtime=0), *layers[1:]]
    layer_type = "application/vnd.oci.image.layer.v1.tar"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": layer_type + ("+gzip" if i == 0 else ""),
                    "digest": sha256_digest(b),
                    "size": len(b),
                }
                for i, b in enumerate(blobs)
            ],
        }
    ).encode()
    index = {"schemaVersion": 2, "manifests": [{"digest": sha256_digest(manifest)}]}
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": json.dumps(index)}
    for blob in [config, manifest, *blobs]:
        files["blobs/" + sha256_digest(blob).replace(":", "/")] = blob
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return out.getvalue()


def test_oci_layout_archive_pulls(
    registry: LocalRegistry, images: Images, dclient: docker.DockerClient
) -> None:
    src, src_id = images.build(payload=1000)
    saved = b"".join(dclient.images.get(src).save())
    ref = registry.push_archive(io.BytesIO(oci_archive(saved)), unique_repo(), "oci")
    images.drop(src)

    images.pulled(ref)

    assert dclient.images.get(ref).id == src_id
    out = dclient.containers.run(ref, ["cat", "/id"], remove=True, network_mode="none")
    assert len(out.strip()) == 32
