"""The built-in import steps (abbild.import_plugins) on real data: files compressed
with the real libraries and commands, disk images made by qemu-img, and hostile images
(a backing file, an external data file, extents elsewhere, decompression bombs)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import pathlib
import shutil
import subprocess
import sys
import tracemalloc
import uuid
import zipfile

import pytest
import pyzstd

from abbild import config, import_plugins
from abbild.errors import ConfigError, InvalidImageData, SizeLimitExceeded, StoreFull
from abbild.image import Image
from abbild.import_plugins import (
    ImportStepsPlugin,
    _run_limited,
    check_qemu_info,
    convert,
    decompress,
    detect_compression,
    inject_metadata,
    qemu_img_info,
)
from abbild.import_steps import StagedData
from abbild.plugins import get_plugin_manager
from abbild.registry import Viewer

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-img") is None and os.environ.get("CI") != "true",
    reason="qemu-img is not installed (Debian: qemu-utils; make install-test installs it)",
)

MIB = 1 << 20


def payload(size: int = 3 * MIB) -> bytes:
    """Data like a disk's: stretches of zeros (sparse in every format) between random bytes."""
    chunks = []
    while sum(map(len, chunks)) < size:
        chunks.append(os.urandom(64 * 1024))
        chunks.append(bytes(192 * 1024))
    return b"".join(chunks)[:size]


def staged_file(tmp_path: pathlib.Path, data: bytes, disk_format: str = "raw", name: str = "staged") -> StagedData:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    path = staging / name
    path.write_bytes(data)
    image = Image(id=str(uuid.uuid4()), disk_format=disk_format, container_format="bare")
    return StagedData(image=image, path=path, disk_format=disk_format, workdir=workdir, method="glance-direct")


def qemu_img(*args) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


# -- the hook ---------------------------------------------------------------------------------


def test_hook_abbild_import_steps():
    """The built-in plugin offers Glance's four step names, configured by abbild_configure."""
    pm = get_plugin_manager(load_entrypoints=False)
    conf = config.load()
    conf.set_override("inject", {"os_audited": "yes"}, group="inject_metadata_properties")
    pm.hook.abbild_configure.call_historic(kwargs={"conf": conf})
    steps = {}
    for offered in pm.hook.abbild_import_steps():
        steps.update(offered)
    assert {"no_op", "image_decompression", "image_conversion", "inject_image_metadata"} <= set(steps)
    staged = StagedData(Image(id="x"), pathlib.Path("/nonexistent"), "raw", pathlib.Path("/nonexistent"), "x")
    steps["no_op"](staged)
    steps["inject_image_metadata"](staged)
    assert staged.properties == {"os_audited": "yes"}


def test_steps_without_configuration_say_so(tmp_path):
    staged = staged_file(tmp_path, b"data")
    with pytest.raises(ConfigError, match="configuration"):
        ImportStepsPlugin().image_decompression(staged)


# -- image_decompression -------------------------------------------------------------------


def zstd_frames(*parts: bytes) -> bytes:
    return b"".join(pyzstd.compress(p) for p in parts)


def zip_of(files: dict[str, bytes]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


COMPRESSORS = {
    "gzip": gzip.compress,
    "xz": lzma.compress,
    "bzip2": bz2.compress,
    "zstd": pyzstd.compress,
    "zip": lambda d: zip_of({"disk.img": d}),
    # several members / frames, as pigz, pzstd or `cat a.gz b.gz` write them
    "gzip-members": lambda d: gzip.compress(d[: len(d) // 2]) + gzip.compress(d[len(d) // 2 :]),
    "zstd-frames": lambda d: zstd_frames(d[: len(d) // 3], d[len(d) // 3 :]),
}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_decompresses_by_magic(tmp_path, kind):
    data = payload()
    # a name that says nothing about the compression: detection is by content
    staged = staged_file(tmp_path, COMPRESSORS[kind](data), name="image.raw")
    original = staged.path
    assert detect_compression(original) == kind.split("-")[0]
    decompress(staged, max_size=10 * MIB)
    assert staged.path != original and staged.path.parent == staged.workdir
    assert staged.path.read_bytes() == data
    assert staged.disk_format == "raw"
    assert original.exists()  # the staging area's file is the import engine's to remove


def test_the_zstd_command_output_too(tmp_path):
    data = payload()
    source = tmp_path / "disk.raw"
    source.write_bytes(data)
    subprocess.run(["zstd", "-q", "-19", str(source), "-o", str(tmp_path / "disk.zst")], check=True)
    staged = staged_file(tmp_path, (tmp_path / "disk.zst").read_bytes())
    decompress(staged, max_size=10 * MIB)
    assert staged.path.read_bytes() == data


def test_uncompressed_data_is_left_alone(tmp_path):
    staged = staged_file(tmp_path, payload(), name="image.gz")  # the name lies
    before = staged.path
    decompress(staged, max_size=10 * MIB)
    assert staged.path == before
    assert list(staged.workdir.iterdir()) == []


@needs_qemu
def test_a_qcow2_is_no_compressed_file(tmp_path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(payload())
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", raw, tmp_path / "disk.qcow2")  # compressed clusters inside
    assert detect_compression(tmp_path / "disk.qcow2") is None


def test_a_step_after_a_step_removes_the_intermediate_file(tmp_path):
    data = payload()
    staged = staged_file(tmp_path, gzip.compress(gzip.compress(data)))
    decompress(staged, max_size=10 * MIB)
    first = staged.path
    decompress(staged, max_size=10 * MIB)
    assert staged.path.read_bytes() == data
    assert not first.exists() and list(staged.workdir.iterdir()) == [staged.path]


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd", "zip"])
def test_a_decompression_bomb_is_refused_and_leaves_nothing(tmp_path, kind):
    # 64 MiB of zeros compress to some KiB; the limit is 8 MiB
    bomb = COMPRESSORS[kind](bytes(64 * MIB))
    assert len(bomb) < MIB
    staged = staged_file(tmp_path, bomb)
    before = staged.path
    with pytest.raises(
        SizeLimitExceeded, match=f"{kind}-compressed image decompresses to more than the image_size_cap"
    ):
        decompress(staged, max_size=8 * MIB)
    assert staged.path == before
    assert list(staged.workdir.iterdir()) == []


def test_decompression_is_flat_in_memory(tmp_path):
    """256 MiB out of a few KiB of zstd, with Python's allocations staying near one chunk."""
    with pyzstd.ZstdFile(tmp_path / "zeros.zst", "wb") as f:
        for _ in range(256):
            f.write(bytes(MIB))
    staged = staged_file(tmp_path, (tmp_path / "zeros.zst").read_bytes())
    tracemalloc.start()
    try:
        decompress(staged, max_size=1 << 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert staged.path.stat().st_size == 256 * MIB
    assert peak < 8 * MIB


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", "zip"])
def test_truncated_data_is_refused(tmp_path, kind):
    compressed = COMPRESSORS[kind](payload())
    staged = staged_file(tmp_path, compressed[: len(compressed) // 2])
    with pytest.raises(InvalidImageData, match=f"starts like {kind}-compressed data but cannot be decompressed"):
        decompress(staged, max_size=10 * MIB)
    assert list(staged.workdir.iterdir()) == []


def test_corrupt_gzip_is_refused(tmp_path):
    compressed = bytearray(gzip.compress(payload()))
    compressed[len(compressed) // 2 : len(compressed) // 2 + 64] = os.urandom(64)
    staged = staged_file(tmp_path, bytes(compressed))
    with pytest.raises(InvalidImageData, match="gzip"):
        decompress(staged, max_size=10 * MIB)


def test_a_zip_of_several_files_is_refused(tmp_path):
    staged = staged_file(tmp_path, zip_of({"a.img": b"a", "b.img": b"b"}))
    with pytest.raises(InvalidImageData, match="zip archive of 2 files; an image must be a zip archive of exactly one"):
        decompress(staged, max_size=10 * MIB)


def test_a_full_disk_is_named_without_paths(tmp_path, monkeypatch):
    staged = staged_file(tmp_path, gzip.compress(payload()))
    full = staged.workdir / "full"
    full.symlink_to("/dev/full")  # the kernel's own ENOSPC on every write
    monkeypatch.setattr(import_plugins, "_new_file", lambda staged, suffix: full)
    with pytest.raises(StoreFull, match="is full: no room for the decompressed image") as exc:
        decompress(staged, max_size=10 * MIB)
    assert str(tmp_path) not in str(exc.value)
    assert not full.is_symlink()


def test_a_zip_member_in_an_unknown_method_is_refused(tmp_path):
    archive = bytearray(zip_of({"disk.img": payload()}))
    # deflate64 (method 9), which Python's zipfile cannot read: in the local and central headers
    archive[8:10] = (9).to_bytes(2, "little")
    central = archive.index(b"PK\x01\x02")
    archive[central + 10 : central + 12] = (9).to_bytes(2, "little")
    staged = staged_file(tmp_path, bytes(archive))
    with pytest.raises(InvalidImageData, match="starts like zip-compressed data but cannot be decompressed"):
        decompress(staged, max_size=10 * MIB)
    assert list(staged.workdir.iterdir()) == []


def test_the_step_uses_image_size_cap(tmp_path):
    conf = config.load()
    conf.set_override("image_size_cap", 4 * MIB)
    staged = staged_file(tmp_path, gzip.compress(bytes(5 * MIB)))
    with pytest.raises(SizeLimitExceeded, match=f"image_size_cap of {4 * MIB} bytes"):
        ImportStepsPlugin(conf).image_decompression(staged)


# -- image_conversion --------------------------------------------------------------------------

# (disk_format, qemu-img format, creation options)
SOURCES = [
    ("qcow2", "qcow2", []),
    ("vmdk", "vmdk", ["-o", "subformat=monolithicSparse"]),
    ("vmdk", "vmdk", ["-o", "subformat=streamOptimized"]),
    ("vhd", "vpc", []),
    ("vhdx", "vhdx", []),
    ("vdi", "vdi", []),
]


def disk_image(tmp_path: pathlib.Path, qemu_format: str, options=(), data: bytes | None = None) -> pathlib.Path:
    tmp_path.mkdir(exist_ok=True)
    raw = tmp_path / "source.raw"
    raw.write_bytes(payload() if data is None else data)
    out = tmp_path / f"source.{qemu_format}"
    qemu_img("convert", "-f", "raw", "-O", qemu_format, *options, raw, out)
    return out


def convert_with(staged: StagedData, output_format="raw", vmdk_allowed_types=("streamOptimized", "monolithicSparse")):
    convert(staged, output_format=output_format, vmdk_allowed_types=list(vmdk_allowed_types), timeout=60)


@needs_qemu
@pytest.mark.parametrize(("disk_format", "qemu_format", "options"), SOURCES, ids=lambda v: str(v))
def test_converts_to_raw_as_qemu_img_does(tmp_path, disk_format, qemu_format, options):
    source = disk_image(tmp_path, qemu_format, options)
    expected = tmp_path / "expected.raw"
    qemu_img("convert", "-f", qemu_format, "-O", "raw", source, expected)
    staged = staged_file(tmp_path, source.read_bytes(), disk_format=disk_format)
    convert_with(staged)
    assert staged.disk_format == "raw"
    assert staged.path.parent == staged.workdir
    assert staged.path.read_bytes() == expected.read_bytes()


@needs_qemu
def test_converts_raw_to_qcow2(tmp_path):
    data = payload()
    staged = staged_file(tmp_path, data)
    convert_with(staged, output_format="qcow2")
    assert staged.disk_format == "qcow2"
    back = tmp_path / "back.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", staged.path, back)
    assert back.read_bytes() == data


@needs_qemu
def test_an_image_in_the_output_format_is_checked_and_kept(tmp_path):
    staged = staged_file(tmp_path, payload())
    before = staged.path
    convert_with(staged)
    assert staged.path == before and staged.disk_format == "raw"
    assert list(staged.workdir.iterdir()) == []


@needs_qemu
def test_a_qcow2_with_a_backing_file_is_refused(tmp_path):
    bad = tmp_path / "bad.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", bad)
    staged = staged_file(tmp_path, bad.read_bytes(), disk_format="qcow2")
    with pytest.raises(InvalidImageData, match="backing file"):
        convert_with(staged)
    assert staged.disk_format == "qcow2"
    assert list(staged.workdir.iterdir()) == []


@needs_qemu
def test_a_qcow2_with_an_external_data_file_is_refused(tmp_path):
    bad = tmp_path / "bad.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'outside.raw'}", bad, "1M")
    staged = staged_file(tmp_path, bad.read_bytes(), disk_format="qcow2")
    with pytest.raises(InvalidImageData, match="data.file"):
        convert_with(staged)
    assert list(staged.workdir.iterdir()) == []


@needs_qemu
def test_a_vmdk_naming_other_files_is_refused(tmp_path):
    source = disk_image(tmp_path, "vmdk", ["-o", "subformat=monolithicFlat"])  # a descriptor + an extent file
    staged = staged_file(tmp_path, source.read_bytes(), disk_format="vmdk")
    with pytest.raises(InvalidImageData):
        convert_with(staged, vmdk_allowed_types=["monolithicFlat", "monolithicSparse", "streamOptimized"])
    assert list(staged.workdir.iterdir()) == []


@needs_qemu
def test_vmdk_create_types_are_limited_by_vmdk_allowed_types(tmp_path):
    source = disk_image(tmp_path, "vmdk", ["-o", "subformat=streamOptimized"])
    staged = staged_file(tmp_path, source.read_bytes(), disk_format="vmdk")
    with pytest.raises(InvalidImageData, match="streamOptimized.? (are|is) not allowed"):
        convert_with(staged, vmdk_allowed_types=["monolithicSparse"])
    with pytest.raises(InvalidImageData, match=r"(vmdk_allowed_types|allowed): none"):
        convert_with(staged, vmdk_allowed_types=[])


@needs_qemu
def test_qemu_img_info_is_a_second_line_of_defence(tmp_path):
    """What the inspector refuses first, qemu-img's own answer refuses too (checked
    without the inspector), as Glance does after OSSA-2024-001."""
    backing = tmp_path / "backing.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", backing)
    data_file = tmp_path / "data-file.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'outside.raw'}", data_file, "1M")
    flat = disk_image(tmp_path / "flat", "vmdk", ["-o", "subformat=monolithicFlat"])
    sparse = disk_image(tmp_path / "sparse", "vmdk", ["-o", "subformat=monolithicSparse"])
    everything = ["monolithicFlat", "monolithicSparse", "streamOptimized"]
    cases = [
        (backing, "qcow2", everything, "backing file"),
        (data_file, "qcow2", everything, "data file"),
        (flat, "vmdk", everything, "extents are in other files"),
        (sparse, "vmdk", ["streamOptimized"], "monolithicSparse are not allowed"),
        (sparse, "qcow2", everything, "failed on the image"),  # qemu-img refuses to read it as qcow2
    ]
    for path, qemu_format, allowed, why in cases:
        with pytest.raises(InvalidImageData, match=why):
            check_qemu_info(qemu_img_info(path, qemu_format), path, qemu_format, allowed)
    check_qemu_info(qemu_img_info(sparse, "vmdk"), sparse, "vmdk", everything)


@needs_qemu
def test_data_that_is_not_its_disk_format_is_refused(tmp_path):
    qcow2 = disk_image(tmp_path, "qcow2")
    as_raw = staged_file(tmp_path, qcow2.read_bytes(), disk_format="raw", name="a")
    with pytest.raises(InvalidImageData, match="declared raw but its data is a qcow2 image"):
        convert_with(as_raw, output_format="qcow2")
    as_qcow2 = staged_file(tmp_path, payload(), disk_format="qcow2", name="b")
    with pytest.raises(InvalidImageData):
        convert_with(as_qcow2)
    assert list(as_raw.workdir.iterdir()) == []


def test_qemu_img_reads_only_formats_the_inspector_checked_first():
    from abbild import formats

    assert set(import_plugins.QEMU_FORMATS) <= formats.INSPECTABLE


@needs_qemu
@pytest.mark.parametrize("disk_format", ["iso", "ami", "ploop"])
def test_formats_it_does_not_convert_stay(tmp_path, disk_format):
    staged = staged_file(tmp_path, payload(), disk_format=disk_format)
    before = staged.path
    convert_with(staged)
    assert (staged.path, staged.disk_format) == (before, disk_format)


@needs_qemu
def test_conversion_is_stopped_at_its_timeout(tmp_path):
    source = disk_image(tmp_path, "qcow2", data=payload(32 * MIB))
    staged = staged_file(tmp_path, source.read_bytes(), disk_format="qcow2")
    with pytest.raises(InvalidImageData, match="took longer than"):
        convert(staged, output_format="raw", vmdk_allowed_types=[], timeout=0.001)
    assert list(staged.workdir.iterdir()) == []


def test_qemu_img_runs_under_resource_limits():
    hog = [sys.executable, "-c", "x = bytearray(1 << 31)"]  # 2 GiB
    with pytest.raises(InvalidImageData, match="failed"):
        _run_limited(hog, address_space=1 << 30, cpu_seconds=30, timeout=60)
    spin = [sys.executable, "-c", "while True: pass"]
    with pytest.raises(InvalidImageData, match="killed at its resource limits"):
        _run_limited(spin, address_space=1 << 30, cpu_seconds=1, timeout=60)


def test_without_qemu_img_the_message_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: nothing installed
    staged = staged_file(tmp_path, payload(), disk_format="qcow2")
    with pytest.raises(ConfigError, match=r"qemu-img.*qemu-utils"):
        convert_with(staged)


@needs_qemu
def test_the_step_uses_the_configuration(tmp_path):
    conf = config.load()
    conf.set_override("output_format", "qcow2", group="image_conversion")
    staged = staged_file(tmp_path, payload())
    ImportStepsPlugin(conf).image_conversion(staged)
    assert staged.disk_format == "qcow2"
    conf.set_override("vmdk_allowed_types", [], group="image_format")
    vmdk = staged_file(tmp_path, disk_image(tmp_path, "vmdk").read_bytes(), disk_format="vmdk", name="v")
    with pytest.raises(InvalidImageData, match="not allowed"):
        ImportStepsPlugin(conf).image_conversion(vmdk)


# -- inject_image_metadata -------------------------------------------------------------------


INJECT = {"hw_firmware_type": "uefi", "os_audited": "yes"}


@pytest.mark.parametrize(
    ("viewer", "injected"),
    [
        (None, True),
        (Viewer(project_id="p", roles=("member", "reader")), True),
        (Viewer(project_id="p", roles=("member", "admin")), False),
    ],
    ids=["no viewer", "member", "admin"],
)
def test_inject_unless_an_ignored_role(tmp_path, viewer, injected):
    staged = staged_file(tmp_path, b"x")
    staged.viewer = viewer
    staged.properties["kept"] = "1"
    inject_metadata(staged, INJECT, ["admin"])
    assert staged.properties == ({"kept": "1", **INJECT} if injected else {"kept": "1"})


def test_inject_through_the_configuration(tmp_path):
    conf = config.load()
    assert conf.inject_metadata_properties.ignore_user_roles == ["admin"]
    conf.set_override("inject", INJECT, group="inject_metadata_properties")
    conf.set_override("ignore_user_roles", ["uploader"], group="inject_metadata_properties")
    admin = staged_file(tmp_path, b"x")
    admin.viewer = Viewer(project_id="p", roles=("admin",))
    ImportStepsPlugin(conf).inject_image_metadata(admin)
    assert admin.properties == INJECT
    uploader = staged_file(tmp_path, b"x")
    uploader.viewer = Viewer(project_id="p", roles=("uploader",))
    ImportStepsPlugin(conf).inject_image_metadata(uploader)
    assert uploader.properties == {}


def test_reserved_properties_are_never_injected(tmp_path):
    staged = staged_file(tmp_path, b"x")
    inject_metadata(staged, {"os_glance_import_task": "x", "a": "b"}, [])
    assert staged.properties == {"a": "b"}
