"""The format inspectors on real images (made by qemu-img, xorriso and sgdisk) and on the
hostile ones of OSSA-2024-001, fed in chunks of every size; Glance's rules for an
image's data (:func:`abbild.formats.judge`); the built-in plugin."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from oslo_config import cfg

from abbild import formats, opts
from abbild.errors import InvalidImageData
from abbild.image import Image
from abbild.plugins import get_plugin_manager
from tests import disk_images

MIB = disk_images.MIB


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    """*data* in chunks of *size*; 1-byte chunks only through the first 320 KiB (every
    header and table qemu writes sits there, but for VHDX's metadata), the rest in
    chunks of 64 KiB, so the test stays quick."""
    limit = len(data) if size > 1 else min(len(data), 320 << 10)
    for i in range(0, limit, size):
        yield data[i : min(i + size, limit)]
    for i in range(limit, len(data), 64 << 10):
        yield data[i : i + (64 << 10)]


def stream(data: bytes, size: int, settings: formats.Settings | None = None) -> formats.Inspection:
    detector = formats.Detector(settings)
    for chunk in chunked(data, size):
        detector.feed(chunk)
    return detector.finish()


CHUNKS = pytest.mark.parametrize("size", [1, 7, MIB], ids=["1B", "7B", "1MiB"])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, tuple[Path, str, int]]:
    """name -> (file, the format it is, its virtual size as qemu-img reads it)."""
    d = tmp_path_factory.mktemp("images")
    made = {}
    for name, fmt, qemu_fmt, options in [
        ("qcow2", "qcow2", "qcow2", ()),
        ("qcow2-v2", "qcow2", "qcow2", ("-o", "compat=0.10")),
        ("vmdk-sparse", "vmdk", "vmdk", ("-o", "subformat=monolithicSparse")),
        ("vmdk-stream", "vmdk", "vmdk", ("-o", "subformat=streamOptimized")),
        ("vhd-dynamic", "vhd", "vpc", ()),
        ("vhd-fixed", "vhd", "vpc", ("-o", "subformat=fixed")),
        ("vhdx", "vhdx", "vhdx", ()),
        ("vdi", "vdi", "vdi", ()),
        ("qed", "qed", "qed", ()),
    ]:
        path = disk_images.qemu_img(d, qemu_fmt, "3M", *options, name=name)
        made[name] = (path, fmt, disk_images.virtual_size(path, qemu_fmt))
    path = disk_images.luks(d, "1M")
    made["luks"] = (path, "luks", disk_images.virtual_size(path, "luks"))
    path = disk_images.iso(d)
    made["iso"] = (path, "iso", path.stat().st_size)
    path = disk_images.gpt(d)
    made["gpt"] = (path, "gpt", path.stat().st_size)
    path = disk_images.mbr(d)
    made["mbr"] = (path, "raw", path.stat().st_size)
    path = d / "random.raw"
    path.write_bytes(os.urandom(MIB + 3))
    made["raw"] = (path, "raw", MIB + 3)
    return made


NAMES = ["qcow2", "qcow2-v2", "vmdk-sparse", "vmdk-stream", "vhd-dynamic", "vhd-fixed", "vhdx", "vdi", "qed"]
NAMES += ["luks", "iso", "gpt", "mbr", "raw"]


@CHUNKS
@pytest.mark.parametrize("name", NAMES)
def test_each_format_is_detected_with_its_virtual_size(images, name, size):
    path, fmt, virtual = images[name]
    found = stream(path.read_bytes(), size)
    assert (found.format, found.virtual_size) == (fmt, virtual)
    assert found.failures == ({"banned": found.failures.get("banned")} if fmt == "qed" else {})
    assert formats.inspect_file(path) == found


def test_a_file_is_inspected_without_reading_all_of_it(tmp_path):
    """inspect_file reads the start and, for the VHD footer, the last sector: an 8 TiB
    sparse file takes no time."""
    path = tmp_path / "huge.raw"
    with path.open("wb") as f:
        f.truncate(8 << 40)
    found = formats.inspect_file(path)
    assert (found.format, found.virtual_size, found.size) == ("raw", 8 << 40, 8 << 40)


def test_memory_stays_bounded_on_a_large_image(tmp_path):
    """A 1 GiB qcow2 with its metadata preallocated (a sparse file of 1 GiB) and a 256 MiB raw disk, streamed in 1 MiB chunks: the
    inspectors never hold more than a few KiB (a header each, the VHD footer)."""
    qcow2 = disk_images.qemu_img(tmp_path, "qcow2", "1G", "-o", "preallocation=metadata", name="big.qcow2")
    raw = tmp_path / "big.raw"
    with raw.open("wb") as f:
        f.truncate(256 * MIB)
    for path, fmt in ((qcow2, "qcow2"), (raw, "raw")):
        detector = formats.Detector()
        most = 0
        with path.open("rb") as f:
            while chunk := f.read(MIB):
                detector.feed(chunk)
                most = max(most, detector.retained)
        assert most <= 4096, most
        assert detector.retained <= 512  # once decided: the VHD inspector's last sector
        assert detector.finish().format == fmt


def test_a_text_vmdk_descriptor_is_held_to_qemu_s_limit():
    descriptor = disk_images.vmdk_descriptor("monolithicSparse", "disk.vmdk")
    detector = formats.Detector()
    most = 0
    for chunk in chunked(descriptor + b"#" * (3 * MIB), MIB):
        detector.feed(chunk)
        most = max(most, detector.retained)
    assert most <= MIB + 4096
    assert detector.finish().format == "vmdk"


# -- hostile images -------------------------------------------------------------------------------


@CHUNKS
def test_qcow2_with_a_backing_file(tmp_path, size):
    path = disk_images.qemu_img(tmp_path, "qcow2", "1M", "-b", "/etc/passwd", "-F", "raw")
    found = stream(path.read_bytes(), size)
    assert found.format == "qcow2" and list(found.failures) == ["backing_file"]
    assert "/etc/passwd" in found.failures["backing_file"]


@CHUNKS
def test_qcow2_with_an_external_data_file(tmp_path, size):
    path = disk_images.qemu_img(tmp_path, "qcow2", "1M", "-o", f"data_file={tmp_path}/data.raw")
    found = stream(path.read_bytes(), size)
    assert list(found.failures) == ["data_file"]
    assert "feature bit" in found.failures["data_file"] and f"{tmp_path}/data.raw" in found.failures["data_file"]


def test_qcow2_data_file_extension_without_the_feature_bit(tmp_path):
    data = bytearray(disk_images.qemu_img(tmp_path, "qcow2", "1M", "-o", f"data_file={tmp_path}/d.raw").read_bytes())
    struct.pack_into(">Q", data, 72, 0)  # clear the feature bits: the extension alone must tell
    found = stream(bytes(data), 7)
    assert list(found.failures) == ["data_file"] and "header extension" in found.failures["data_file"]


@pytest.mark.parametrize(
    ("offset", "value", "why"),
    [(4, 4, "version 4"), (72, 1 << 5, "unknown incompatible features"), (100, 72, "fewer than 104")],
    ids=["version", "feature-bit", "short-header"],
)
def test_qcow2_unknown_features(tmp_path, offset, value, why):
    data = bytearray(disk_images.qcow2(tmp_path))
    struct.pack_into(">I" if offset != 72 else ">Q", data, offset, value)
    found = stream(bytes(data), 7)
    assert list(found.failures) == ["unknown_features"] and why in found.failures["unknown_features"]


def test_truncated_qcow2_header_is_unsafe(tmp_path):
    found = stream(disk_images.qcow2(tmp_path)[:90], 1)
    assert found.format == "qcow2" and "ends inside" in found.failures["unknown_features"]


@CHUNKS
def test_vmdk_monolithic_flat_names_its_own_extent_file(tmp_path, size):
    path = disk_images.qemu_img(tmp_path, "vmdk", "1M", "-o", "subformat=monolithicFlat")
    found = stream(path.read_bytes(), size)
    assert found.format == "vmdk" and list(found.failures) == ["descriptor"]
    assert "create type monolithicFlat is not allowed" in found.failures["descriptor"]
    allowed = formats.Settings(vmdk_allowed_types=("monolithicFlat",))
    assert stream(path.read_bytes(), size, allowed).failures == {}


@CHUNKS
def test_vmdk_descriptor_naming_a_host_file(size):
    found = stream(disk_images.vmdk_descriptor("monolithicSparse", "/etc/passwd"), size)
    assert found.format == "vmdk" and "by its path, /etc/passwd" in found.failures["descriptor"]


def test_vmdk_delta_disk_names_its_parent(tmp_path):
    base = disk_images.qemu_img(tmp_path, "vmdk", "1M", name="base.vmdk")
    child = disk_images.qemu_img(tmp_path, "vmdk", "1M", "-b", str(base), "-F", "vmdk", name="child.vmdk")
    found = formats.inspect_file(child)
    assert found.failures == {"descriptor": f"it is a delta disk whose parent is {base}"}
    assert formats.inspect_file(base).failures == {}


def test_vmdk_descriptor_lines_are_restricted():
    text = disk_images.vmdk_descriptor("monolithicSparse", "disk.vmdk") + b"some other stuff\n"
    assert "would not expect" in stream(text, 7).failures["descriptor"]
    no_extent = b'# Disk DescriptorFile\nversion=1\ncreateType="monolithicSparse"\n'
    assert "names no extent" in stream(no_extent, 7).failures["descriptor"]


def test_sparse_vmdk_with_a_hostile_embedded_descriptor(tmp_path):
    data = bytearray(disk_images.qemu_img(tmp_path, "vmdk", "1M").read_bytes())
    start = data.index(b"RW ")
    end = data.index(b"\n", start)
    data[start:end] = b'RW 2048 FLAT "/etc/shadow" 0'.ljust(end - start)
    found = stream(bytes(data), 7)
    assert "by its path, /etc/shadow" in found.failures["descriptor"]


@CHUNKS
def test_stream_optimized_footer(tmp_path, size):
    good = disk_images.stream_optimized_with_footer(tmp_path)
    assert stream(good, size).failures == {}
    bad = disk_images.stream_optimized_with_footer(tmp_path, break_footer=True)
    found = stream(bad, size)
    assert "another disk than the header" in found.failures["footer"]
    path = tmp_path / "footer.vmdk"
    path.write_bytes(bad)
    assert formats.inspect_file(path).failures == found.failures


def test_luks2_is_refused(images):
    data = bytearray(images["luks"][0].read_bytes())
    struct.pack_into(">H", data, 6, 2)
    assert "LUKS version 2" in stream(bytes(data), 7).failures["version"]


def test_differencing_vhd_names_its_parent(images):
    data = bytearray(images["vhd-dynamic"][0].read_bytes())
    for at in (0, len(data) - 512):
        struct.pack_into(">I", data, at + 60, 4)
    assert "differencing" in stream(bytes(data), 7).failures


@CHUNKS
def test_hybrid_iso_is_an_iso(tmp_path, size):
    path = disk_images.hybrid_iso(tmp_path)
    detector = formats.Detector()
    for chunk in chunked(path.read_bytes(), size):
        detector.feed(chunk)
    found = detector.finish()
    assert {i.name for i in detector.inspectors if i.matched} == {"iso", "gpt"}
    assert (found.format, found.virtual_size, found.failures) == ("iso", path.stat().st_size, {})


def test_hybrid_mbr_fails_the_gpt_mbr_check(tmp_path):
    data = bytearray(disk_images.gpt(tmp_path).read_bytes())
    struct.pack_into("<B3sB3sII", data, 446 + 16, 0x80, b"\0\0\0", 0x83, b"\0\0\0", 2048, 100)
    found = stream(bytes(data), 7)
    assert found.format == "gpt" and "hybrid MBR" in found.failures["mbr"]


@pytest.mark.parametrize(
    "hide",
    [
        (32768, b"\x01CD001"),  # an ISO volume descriptor inside a qcow2
        (446, struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, 4096) + bytes(48) + b"\x55\xaa"),
    ],
    ids=["qcow2+iso", "qcow2+gpt"],
)
def test_data_that_passes_for_two_formats_is_refused(tmp_path, hide):
    data = bytearray(disk_images.qcow2(tmp_path))
    offset, structure = hide
    data[offset : offset + len(structure)] = structure
    with pytest.raises(formats.MultipleFormats, match="more than one disk format"):
        stream(bytes(data), 7)
    path = tmp_path / "two.img"
    path.write_bytes(data)
    with pytest.raises(InvalidImageData):
        formats.inspect_file(path)


# -- the verdict (Glance's rules) ---------------------------------------------------------------------


def found(fmt: str, virtual: int | None = 100, failures: dict | None = None, size: int = 50) -> formats.Inspection:
    return formats.Inspection(fmt, virtual, failures or {}, size)


STRICT = formats.Settings()
LAX = formats.Settings(require_image_format_match=False)


def test_judge_the_declared_format_gets_its_virtual_size():
    assert formats.judge(found("qcow2"), "qcow2", "bare", STRICT) == {"virtual_size": 100}
    assert formats.judge(found("vhdx", None), "vhdx", "bare", STRICT) == {}


def test_judge_raw_data_for_formats_no_inspector_knows():
    for disk_format in ("ami", "ari", "aki", "ploop"):
        assert formats.judge(found("raw"), disk_format, "bare", STRICT) == {}


def test_judge_declared_raw_accepts_safe_formats_with_their_size():
    for fmt in ("qcow2", "gpt", "iso", "vmdk"):
        assert formats.judge(found(fmt), "raw", "bare", STRICT) == {"virtual_size": 50}


def test_judge_a_mismatch_is_refused_unless_not_required():
    with pytest.raises(InvalidImageData, match="it is a qcow2 image, but the disk_format of the image is vmdk"):
        formats.judge(found("qcow2"), "vmdk", "bare", STRICT)
    with pytest.raises(InvalidImageData, match="no disk format abbild knows"):
        formats.judge(found("raw"), "qcow2", "bare", STRICT)
    assert formats.judge(found("qcow2"), "vmdk", "bare", LAX) == {}


def test_judge_unsafe_data_is_refused_whatever_was_declared():
    unsafe = found("qcow2", failures={"backing_file": "it has a backing file"})
    for disk_format, container_format, settings in (("raw", "bare", STRICT), ("qcow2", "ovf", LAX)):
        with pytest.raises(InvalidImageData, match="fails the safety check backing_file: it has a backing file"):
            formats.judge(unsafe, disk_format, container_format, settings)


def test_judge_gpt_checks_may_only_warn():
    mbr = found("gpt", failures={"mbr": "a hybrid MBR"})
    assert formats.judge(mbr, "raw", "bare", STRICT) == {"virtual_size": 50}
    with pytest.raises(InvalidImageData, match="gpt_safety_checks_nonfatal"):
        formats.judge(mbr, "raw", "bare", formats.Settings(gpt_safety_checks_nonfatal=()))


def test_judge_other_container_formats_only_get_the_safety_checks():
    assert formats.judge(found("qcow2"), "vmdk", "ova", STRICT) == {}


def test_inspect_file_judges_when_given_a_disk_format(images):
    path = images["qcow2"][0]
    assert formats.inspect_file(path, "qcow2").format == "qcow2"
    with pytest.raises(InvalidImageData, match="disk_format of the image is vhd"):
        formats.inspect_file(path, "vhd")


# -- the built-in plugin ------------------------------------------------------------------------------


def _Image(disk_format: str, container_format: str = "bare") -> Image:
    return Image(id="4c9f5c2e-1b7a-4d0e-9a52-000000000001", disk_format=disk_format, container_format=container_format)


def configured_plugins(**overrides):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    for name, value in overrides.items():
        conf.set_override(name, value, group="image_format")
    pm = get_plugin_manager(load_entrypoints=False)
    pm.hook.abbild_configure.call_historic(kwargs={"conf": conf})
    return pm


def format_checks(pm, image, purpose="upload"):
    return [c for c in pm.hook.abbild_data_checks(image=image, purpose=purpose) if isinstance(c, formats.FormatCheck)]


def test_hook_abbild_data_checks(images):
    pm = configured_plugins()
    data = images["vdi"][0].read_bytes()
    for purpose in ("upload", "import"):
        [check] = format_checks(pm, _Image("vdi"), purpose)
        for chunk in chunked(data, 7):
            check.feed(chunk)
        assert check.finish() == {"virtual_size": images["vdi"][2]}
        [check] = format_checks(pm, _Image("qcow2"), purpose)
        with pytest.raises(InvalidImageData, match="it is a vdi image, but the disk_format of the image is qcow2"):
            check.feed(data)
            check.finish()
    # Staged data may still be decompressed by an import step: only its safety counts.
    [check] = format_checks(pm, _Image("qcow2"), "stage")
    check.feed(data)
    assert check.finish() == {}
    [check] = format_checks(pm, _Image("raw"), "stage")
    with pytest.raises(InvalidImageData, match="qed image that fails the safety check banned"):
        check.feed(images["qed"][0].read_bytes())
        check.finish()


def test_the_plugin_follows_the_options(images):
    pm = configured_plugins(require_image_format_match=False, vmdk_allowed_types=["monolithicSparse"])
    [check] = format_checks(pm, _Image("qcow2"))
    check.feed(images["vdi"][0].read_bytes())
    assert check.finish() == {}
    [check] = format_checks(pm, _Image("vmdk"))
    with pytest.raises(InvalidImageData, match=r"create type streamOptimized is not allowed .*: monolithicSparse\)"):
        check.feed(images["vmdk-stream"][0].read_bytes())
        check.finish()


def test_settings_defaults_are_glance_s():
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    assert formats.Settings.from_conf(conf) == formats.Settings(
        require_image_format_match=True,
        vmdk_allowed_types=("streamOptimized", "monolithicSparse"),
        gpt_safety_checks_nonfatal=("mbr",),
    )


def test_a_certain_refusal_comes_before_the_end_of_the_data(tmp_path):
    """A large image that is not its disk_format, or whose header is unsafe, is refused
    within its first chunks, not after the whole of it went to a store."""
    data = disk_images.qemu_img(tmp_path, "qcow2", "1G", "-o", "preallocation=metadata", name="big.qcow2")
    with data.open("rb") as f:
        chunks = chunked(f.read(8 * MIB), MIB)  # the first 8 MiB of 1 GiB
    check = formats.FormatCheck("vmdk", "bare", STRICT)
    with pytest.raises(InvalidImageData, match="it is a qcow2 image, but the disk_format of the image is vmdk"):
        for chunk in chunks:
            check.feed(chunk)
    assert check.detector.size == MIB
    evil = disk_images.qemu_img(tmp_path, "qcow2", "1M", "-b", "/etc/passwd", "-F", "raw").read_bytes()
    check = formats.FormatCheck("raw", "bare", STRICT)
    with pytest.raises(InvalidImageData, match="backing_file"):
        check.feed(evil[: 64 << 10])
    # Nothing to refuse: no verdict before the end (a fixed VHD's footer may still come).
    check = formats.FormatCheck("qcow2", "bare", STRICT)
    check.feed(disk_images.qcow2(tmp_path))
    assert check.finish() == {"virtual_size": MIB}
    check = formats.FormatCheck("vhd", "bare", STRICT)
    fixed = disk_images.qemu_img(tmp_path, "vpc", "1M", "-o", "subformat=fixed").read_bytes()
    for chunk in chunked(fixed, 4096):
        check.feed(chunk)
    assert check.finish() == {"virtual_size": len(fixed) - 512}


def test_an_inspector_that_breaks_refuses_its_format_and_spares_the_others(images, monkeypatch):
    """A fault that real data cannot provoke (a bug in one inspector): never a 500, never
    unchecked data of that format, and every other format detected as before."""

    def broken(self, name, data):
        if data[0x40:0x44] == b"\x7f\x10\xda\xbe":
            raise struct.error("unexpected")

    monkeypatch.setattr(formats.Vdi, "got", broken)
    found = stream(images["vdi"][0].read_bytes(), 7)
    assert found.format == "raw"  # not recognised any more...
    assert stream(images["qcow2"][0].read_bytes(), MIB).format == "qcow2"

    def broken_after_matching(self, name, data):
        self.matched = True
        raise ZeroDivisionError

    monkeypatch.setattr(formats.Vdi, "got", broken_after_matching)
    found = stream(images["vdi"][0].read_bytes(), 7)
    assert found.format == "vdi" and "could not be read" in found.failures["structure"]  # ...or refused
