"""Test images made from Debian's busybox-static: a rootfs tar (``podman import``), a
one-layer OCI image layout tar (``ctr image import``) and a pod sandbox image of the same
layer; no registry is involved."""

from __future__ import annotations

import hashlib
import io
import json
import platform
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

from tests.integration.runtimes import BUSYBOX, CTR_IMAGE, need


def busybox_rootfs_tar(dest: Path) -> Path:
    """A rootfs tar of Debian's static busybox with its applets as symlinks, and /www."""
    if not Path(BUSYBOX).exists():
        need(BUSYBOX)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "www", "root"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tf.addfile(ti)
        tf.add(BUSYBOX, "bin/busybox")
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            if applet == "busybox":
                continue
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, "busybox", 0o777
            tf.addfile(ti)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
            ("www/index.html", "hello from busybox\n"),
        ):
            data = text.encode()
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tf.addfile(ti, io.BytesIO(data))
    dest.write_bytes(buf.getvalue())
    return dest


def oci_layout_tar(
    rootfs: Path,
    dest: Path,
    name: str = CTR_IMAGE,
    *,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = ("/bin/sh",),
) -> Path:
    """A one-layer OCI image layout tar (what ``ctr image import`` reads), named ``name``,
    whose config runs ``entrypoint`` + ``cmd``."""
    layer = rootfs.read_bytes()

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    run = {key: list(argv) for key, argv in (("Entrypoint", entrypoint), ("Cmd", cmd)) if argv}
    config = json.dumps(
        {"architecture": arch, "os": "linux", "config": run, "rootfs": {"type": "layers", "diff_ids": [digest(layer)]}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": len(layer)}
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest(manifest),
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
    ).encode()
    with tarfile.open(dest, "w") as tf:
        for path, data in [
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            *((f"blobs/sha256/{digest(d)[7:]}", d) for d in (layer, config, manifest)),
            ("index.json", index),
        ]:
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode = len(data), 0o644
            tf.addfile(ti, io.BytesIO(data))
    return dest


def pause_image_tar(rootfs: Path, dest: Path, name: str) -> Path:
    """A pod sandbox ("pause") image: the busybox layer, running a static ``sleep`` forever as
    PID 1 of the pod (the CRI plugin kills it with SIGKILL when the pod stops)."""
    return oci_layout_tar(rootfs, dest, name, entrypoint=("/bin/sleep", "infinity"), cmd=())
