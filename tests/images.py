"""Test images: built locally from busybox, pulled, and removed exactly by reference."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors

from tests.engine import busybox_binary

BASE_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
"""


class PullError(Exception):
    """An `{"error": ...}` event in the engine's pull stream."""


def pull(client: docker.DockerClient, ref: str) -> list[dict[str, Any]]:
    """Pull through docker-py's streaming API; raise on an error event like the driver does."""
    repo, tag = ref.rsplit(":", 1)
    events = list(client.api.pull(repo, tag=tag, stream=True, decode=True))
    errors = [e["error"] for e in events if "error" in e]
    if errors:
        raise PullError(errors[0])
    return events


class Images:
    """Builds test images and remembers every reference made, to remove exactly those."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.refs: list[str] = []

    def build(self, payload: int = 0) -> tuple[str, str]:
        """Build FROM scratch + static busybox + a layer of its own; returns (tag, image id).

        The own layer (a fresh id plus `payload` random bytes) keeps the build cache from
        handing back an image some other tag or earlier run already holds.
        """
        tag = f"peon-test/registry-src:{uuid.uuid4().hex[:12]}"
        cmd = f"echo {uuid.uuid4().hex} > /id && head -c {payload} /dev/urandom > /payload"
        with tempfile.TemporaryDirectory() as ctx:
            shutil.copy(busybox_binary(), Path(ctx) / "busybox")
            dockerfile = BASE_DOCKERFILE + "RUN " + json.dumps(["/bin/sh", "-c", cmd]) + "\n"
            (Path(ctx) / "Dockerfile").write_text(dockerfile)
            image, _ = self.client.images.build(path=ctx, tag=tag, rm=True, forcerm=True)
        self.refs.append(tag)
        return tag, str(image.id)

    def drop(self, ref: str) -> None:
        """Remove a source image once published: with its config still in the image store the
        engine skips the blob downloads, and the pull would prove nothing."""
        self.client.images.remove(ref)
        with contextlib.suppress(docker.errors.ImageNotFound):
            self.client.images.get(ref)
            raise AssertionError(f"{ref} is still present")

    def pulled(self, ref: str) -> list[dict[str, Any]]:
        self.refs.append(ref)
        events = pull(self.client, ref)
        repo = ref.rsplit(":", 1)[0]
        image = self.client.images.get(ref)
        self.refs += [d for d in image.attrs["RepoDigests"] if d.startswith(repo + "@")]
        return events

    def cleanup(self) -> None:
        for ref in reversed(self.refs):
            with contextlib.suppress(docker.errors.ImageNotFound):
                self.client.images.remove(ref)
