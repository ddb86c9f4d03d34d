"""The built-in import steps, offered through the ``abbild_import_steps`` hook under the
names Glance gives them, so that an operator's ``[image_import_opts]
image_import_plugins`` carries over:

``image_decompression``
    gzip, xz, bzip2, zstd and single-file zip data is decompressed into a new file,
    chunk by chunk (flat in memory), recognised by its first bytes, never by a name;
    data that decompresses past ``image_size_cap`` is refused (a decompression bomb).
    Data that is not compressed passes unchanged.
``image_conversion``
    converts the data to ``[image_conversion] output_format`` with ``qemu-img``, after
    the checks Glance added for OSSA-2024-001: the data must be what its disk_format
    says and safe (no backing file, no data file, no VMDK extents elsewhere: the format
    inspector first, ``qemu-img info`` with the format pinned next), and qemu-img runs
    with the format pinned (it never probes), under resource limits and a timeout.
``inject_image_metadata``
    sets ``[inject_metadata_properties] inject`` on the image, unless the importing
    user has one of ``ignore_user_roles``.
``no_op``
    does nothing (Glance's example plugin; operators name it to test their pipeline).
"""

from __future__ import annotations

import bz2
import errno
import gzip
import json
import logging
import lzma
import os
import pathlib
import shutil
import subprocess
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from typing import IO

from abbild.errors import ConfigError, InvalidImageData, SizeLimitExceeded, StoreFull
from abbild.import_steps import StagedData
from abbild.plugins import hookimpl
from abbild.streams import CHUNK_SIZE, read_chunks

LOG = logging.getLogger(__name__)

Step = Callable[[StagedData], None]


class ImportStepsPlugin:
    """Built-in: the import steps above, configured from the service's configuration.

    A plugin manager hands it the configuration through ``abbild_configure``; code
    that runs a step without one (the tests) passes *conf* itself.
    """

    def __init__(self, conf=None) -> None:
        self.conf = conf

    @hookimpl
    def abbild_configure(self, conf):
        self.conf = conf

    @hookimpl
    def abbild_import_steps(self) -> dict[str, Step]:
        return {
            "no_op": no_op,
            "image_decompression": self.image_decompression,
            "image_conversion": self.image_conversion,
            "inject_image_metadata": self.inject_image_metadata,
        }

    def _conf(self):
        if self.conf is None:
            raise ConfigError("the built-in import steps ran before the service's configuration was loaded")
        return self.conf

    def image_decompression(self, staged: StagedData) -> None:
        decompress(staged, max_size=self._conf().image_size_cap)

    def image_conversion(self, staged: StagedData) -> None:
        conf = self._conf()
        convert(
            staged,
            output_format=conf.image_conversion.output_format,
            vmdk_allowed_types=conf.image_format.vmdk_allowed_types,
            timeout=conf.image_conversion.conversion_timeout,
        )

    def inject_image_metadata(self, staged: StagedData) -> None:
        conf = self._conf().inject_metadata_properties
        inject_metadata(staged, conf.inject, conf.ignore_user_roles)


def no_op(staged: StagedData) -> None:
    """Leave the data and the image as they are."""


def _replace_data(staged: StagedData, new: pathlib.Path, disk_format: str | None = None) -> None:
    """Make *new* the staged data; remove the previous file if an earlier step of this
    import made it (in the workdir: the staging area's file is the import engine's)."""
    old = staged.path
    staged.path = new
    if disk_format:
        staged.disk_format = disk_format
    if old != new and old.parent == staged.workdir:
        old.unlink(missing_ok=True)


def _new_file(staged: StagedData, suffix: str) -> pathlib.Path:
    fd, name = tempfile.mkstemp(prefix=f"{staged.image.id}-", suffix=suffix, dir=staged.workdir)
    os.close(fd)
    return pathlib.Path(name)


# -- image_decompression ---------------------------------------------------------------------


def _open_zip_member(f: IO[bytes]) -> IO[bytes]:
    """The one file of a zip archive (Glance takes exactly one, as an image is one file)."""
    archive = zipfile.ZipFile(f)
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) != 1:
        raise InvalidImageData(
            f"The image is a zip archive of {len(members)} files; an image must be a zip archive of exactly one file"
        )
    if members[0].flag_bits & 0x1:
        raise InvalidImageData("The image is an encrypted zip archive; upload it unencrypted")
    return archive.open(members[0])


def _open_zstd(f: IO[bytes]) -> IO[bytes]:
    import pyzstd

    # Concatenated frames (what pzstd and `cat a.zst b.zst` make) are one stream, as for
    # the zstd command; frames asking for a window beyond zstd's default limit (128 MiB)
    # are refused, which bounds the memory one image can make it take.
    return pyzstd.ZstdFile(f, mode="rb")


# (name, magic bytes at offset 0, opener of a decompressing file object over the data)
COMPRESSIONS: list[tuple[str, bytes, Callable[[IO[bytes]], IO[bytes]]]] = [
    ("gzip", b"\x1f\x8b\x08", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    ("xz", b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f, mode="rb")),
    ("bzip2", b"BZh", lambda f: bz2.BZ2File(f, mode="rb")),
    ("zstd", b"\x28\xb5\x2f\xfd", _open_zstd),
    ("zip", b"PK\x03\x04", _open_zip_member),
]


def detect_compression(path: pathlib.Path) -> str | None:
    """The compression *path*'s data is in (by its first bytes), or ``None``."""
    with open(path, "rb") as f:
        head = f.read(16)
    for name, magic, _ in COMPRESSIONS:
        if head.startswith(magic):
            if name == "bzip2" and not (len(head) >= 10 and head[3:4].isdigit() and head[4:10] == b"1AY&SY"):
                continue  # "BZh" alone is too short a magic to trust
            return name
    return None


def _corrupt_data_errors() -> tuple[type[BaseException], ...]:
    """What the decompressors raise for data that is not what its first bytes promise:
    truncated (EOFError), corrupt (gzip's and bz2's OSError without an errno, zlib's and
    lzma's errors, a zip's bad CRC), or not zstd after all."""
    import pyzstd

    # NotImplementedError: a zip member in a compression method Python lacks (deflate64).
    return (OSError, EOFError, lzma.LZMAError, zlib.error, zipfile.BadZipFile, pyzstd.ZstdError, NotImplementedError)


def decompress(staged: StagedData, *, max_size: int) -> None:
    """Decompress the staged data into a new file of the workdir, if it is compressed.

    :param max_size: most bytes the decompressed data may have (``image_size_cap``).
    :raises abbild.errors.SizeLimitExceeded: it decompresses to more than *max_size*.
    :raises abbild.errors.InvalidImageData: it looks compressed but is not valid data
        of that compression (truncated, corrupt), or a zip of more than one file.
    """
    kind = detect_compression(staged.path)
    if kind is None:
        LOG.debug("image %s: staged data is not compressed", staged.image.id)
        return
    opener = next(open_ for name, _, open_ in COMPRESSIONS if name == kind)
    target = _new_file(staged, ".decompressed")
    written = 0
    try:
        with open(staged.path, "rb") as source, open(target, "wb") as out:
            try:
                with opener(source) as data:
                    # One chunk past the limit at most, whatever the ratio: read() of
                    # these decompressors returns at most what was asked for.
                    for chunk in read_chunks(data, chunk_size=CHUNK_SIZE):
                        written += len(chunk)
                        if written > max_size:
                            raise DecompressedTooLarge(max_size, kind)
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            except _corrupt_data_errors() as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # the disk, not the data
                raise InvalidImageData(
                    f"The image data starts like {kind}-compressed data but cannot be decompressed "
                    f"({exc or type(exc).__name__}); upload it complete and intact, or uncompressed"
                ) from exc
    except BaseException as exc:
        target.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # Named without the path: the message is the task's, which users read.
            raise StoreFull(
                "os_glance_staging_store", f"no room for the decompressed image ({written} bytes so far)"
            ) from exc
        raise
    LOG.info("image %s: decompressed %s data to %d bytes", staged.image.id, kind, written)
    _replace_data(staged, target)


class DecompressedTooLarge(SizeLimitExceeded):
    """The data decompresses to more than ``image_size_cap``: a decompression bomb, or
    an image too large for this service."""

    def __init__(self, limit: int, compression: str) -> None:
        super().__init__(limit, "image_size_cap")
        self.compression = compression
        self.args = (
            f"The {compression}-compressed image decompresses to more than the image_size_cap "
            f"of {limit} bytes; refused",
        )


# -- image_conversion -----------------------------------------------------------------------

# Glance's disk_format names -> qemu-img's format names: the formats the inspector
# knows (abbild.formats.INSPECTABLE), so that none reaches qemu-img unchecked. Images of
# other formats stay as they are: iso (booted as a CD, not a disk), ami, aki and ari
# (raw data already), ploop (no inspector: Glance refuses to convert it too).
QEMU_FORMATS = {
    "raw": "raw",
    "qcow2": "qcow2",
    "vmdk": "vmdk",
    "vhd": "vpc",
    "vhdx": "vhdx",
    "vdi": "vdi",
}

# What oslo.concurrency's processutils gives qemu-img in Glance and Nova
# (QEMU_IMG_PROC_LIMITS): a hostile header must not make `qemu-img info` eat the host.
INFO_CPU_SECONDS = 30
INFO_ADDRESS_SPACE = 1 << 30
INFO_TIMEOUT = 120
# Converting reads the whole image: no CPU limit (large images take minutes), the
# timeout instead. Its address space is mostly thread stacks and malloc arenas (capped
# by MALLOC_ARENA_MAX below): some 600 MiB for a qcow2 on 8 threads; qemu-img's pool
# grows to 64 threads on big hosts, hence the room.
CONVERT_ADDRESS_SPACE = 4 << 30


def _run_limited(
    args: list[str], *, address_space: int, cpu_seconds: int | None, timeout: float
) -> subprocess.CompletedProcess:
    """Run *args* under prlimit (as processutils does: a child that cannot be made to
    allocate or compute without bound, even by a hostile file) and a wall-clock timeout.

    :raises abbild.errors.InvalidImageData: it failed, hit a limit or the timeout.
    """
    limits = [f"--as={address_space}"] + ([f"--cpu={cpu_seconds}"] if cpu_seconds else [])
    # prlimit execs the command, so the timeout's kill reaches qemu-img itself.
    command = ["prlimit", *limits, "--", *args]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_qemu_env())
    except subprocess.TimeoutExpired as exc:
        raise InvalidImageData(
            f"{args[0]} {args[1]} took longer than {timeout:g} seconds; the import was stopped"
        ) from exc
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename} is not installed (Debian: util-linux)") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        why = detail[-1] if detail else f"exit status {proc.returncode}"
        if proc.returncode < 0 or proc.returncode > 128:
            why = f"killed at its resource limits ({why})"
        raise InvalidImageData(f"{args[0]} {args[1]} failed on the image: {why}")
    return proc


def _qemu_env() -> dict[str, str]:
    # C locale: its messages end up in task messages, which users read in English.
    # Few malloc arenas: each reserves 64 MiB of address space, which prlimit counts.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "MALLOC_ARENA_MAX": "4"}


def qemu_img_info(path: pathlib.Path, qemu_format: str) -> dict:
    """``qemu-img info`` of *path* read as *qemu_format* (never probed), as a dict."""
    proc = _run_limited(
        ["qemu-img", "info", "--output=json", "-f", qemu_format, str(path)],
        address_space=INFO_ADDRESS_SPACE,
        cpu_seconds=INFO_CPU_SECONDS,
        timeout=INFO_TIMEOUT,
    )
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise InvalidImageData("qemu-img info gave no readable answer about the image") from exc


def check_qemu_info(info: dict, path: pathlib.Path, qemu_format: str, vmdk_allowed_types: list[str]) -> None:
    """Refuse what qemu-img itself found unsafe, after the format inspector (Glance's
    second line of defence): another format, a backing file, an external data file,
    a VMDK create-type not allowed or extents outside the image's own file.

    :raises abbild.errors.InvalidImageData:
    """
    if info.get("format") != qemu_format:
        raise InvalidImageData(f"qemu-img reads the image as {info.get('format')}, not as {qemu_format}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidImageData("Images with a backing file are not allowed")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise InvalidImageData("qcow2 images with an external data file (data-file) are not allowed")
    if qemu_format == "vmdk":
        create_type = specific.get("create-type")
        if not create_type:
            raise InvalidImageData("The VMDK image's create-type cannot be determined")
        if create_type not in vmdk_allowed_types:
            allowed = ", ".join(vmdk_allowed_types) or "none"
            raise InvalidImageData(f"VMDK images of create-type {create_type} are not allowed (allowed: {allowed})")
        for extent in specific.get("extents") or ():
            if os.path.basename(extent.get("filename") or "") != path.name:
                raise InvalidImageData("VMDK images whose extents are in other files are not allowed")


def inspect_format(path: pathlib.Path, disk_format: str, vmdk_allowed_types: list[str]) -> None:
    """The format inspector's verdict (:func:`abbild.formats.inspect_file`): the data
    must be *disk_format* and pass its safety checks, before qemu-img ever reads it.
    The format must match whatever ``require_image_format_match`` says for uploads:
    qemu-img is about to read the data as *disk_format*.

    :raises abbild.errors.InvalidImageData:
    """
    from abbild import formats

    settings = formats.Settings(require_image_format_match=True, vmdk_allowed_types=tuple(vmdk_allowed_types))
    found = formats.inspect_file(path, disk_format, settings=settings).format
    # Stricter than for uploads, as Glance's image_conversion: a qcow2 declared raw is
    # harmless stored, but converted it would become a different disk than its owner
    # meant (its header copied as data). A GPT disk is a raw disk.
    if found != disk_format and not (disk_format == "raw" and found == "gpt"):
        raise InvalidImageData(
            f"The image is declared {disk_format} but its data is a {found} image, so it cannot be "
            f"converted; create the image with disk_format {found}"
        )


def convert(staged: StagedData, *, output_format: str, vmdk_allowed_types: list[str], timeout: float) -> None:
    """Convert the staged data to *output_format* with qemu-img, safely (see the module).

    :raises abbild.errors.InvalidImageData: the data is not its disk_format, is unsafe,
        or qemu-img failed on it.
    """
    for tool, package in (("qemu-img", "qemu-utils"), ("prlimit", "util-linux")):
        if shutil.which(tool, path=_qemu_env()["PATH"]) is None:
            raise ConfigError(f"image_conversion needs {tool}, which is not installed (Debian: {package})")
    source = staged.disk_format
    qemu_source = QEMU_FORMATS.get(source)
    if qemu_source is None:
        LOG.info("image %s: %s images are not converted", staged.image.id, source)
        return
    inspect_format(staged.path, source, vmdk_allowed_types)
    info = qemu_img_info(staged.path, qemu_source)
    check_qemu_info(info, staged.path, qemu_source, vmdk_allowed_types)
    if source == output_format:
        LOG.debug("image %s: already %s, nothing to convert", staged.image.id, output_format)
        return
    target = _new_file(staged, f".{output_format}")
    try:
        _run_limited(
            [
                "qemu-img",
                "convert",
                "-f",
                qemu_source,
                "-O",
                QEMU_FORMATS[output_format],
                str(staged.path),
                str(target),
            ],
            address_space=CONVERT_ADDRESS_SPACE,
            cpu_seconds=None,
            timeout=timeout,
        )
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    LOG.info("image %s: converted %s to %s", staged.image.id, source, output_format)
    _replace_data(staged, target, disk_format=output_format)


# -- inject_image_metadata ----------------------------------------------------------------


def inject_metadata(staged: StagedData, inject: dict[str, str], ignore_user_roles: list[str]) -> None:
    """Set *inject* on the image unless the importing user has a role of
    *ignore_user_roles*. ``os_glance_*`` names are the service's own: never injected."""
    roles = set(staged.viewer.roles) if staged.viewer else set()
    if roles & set(ignore_user_roles):
        LOG.debug("image %s: the importing user has a role of ignore_user_roles, nothing injected", staged.image.id)
        return
    for key, value in inject.items():
        if key.startswith("os_glance"):
            LOG.warning("image %s: not injecting %s, os_glance_* properties are reserved", staged.image.id, key)
            continue
        staged.properties[key] = value
