"""Disk-format inspection: what an image's data really is, how large a disk it holds
(``virtual_size``), and whether a hypervisor may safely open it.

Every inspector is fed the data in chunks of any size, in the same pass as the hashing
(:class:`FormatCheck` is a :class:`~abbild.streams.DataCheck`), and keeps only the few
bounded regions its format needs: a header, a descriptor, a table, the last sectors.
Once it knows its answer it stops looking. :func:`inspect_file` runs the same inspectors
over a local file (import steps, image conversion) and skips what no inspector needs.

Detection follows Glance (oslo.utils' format inspector): nothing specific matched ->
``raw``; more than one format matched -> refused, except an ISO that is also a GPT disk
(a hybrid, bootable from CD and disk) -> ``iso``. The safety checks are Glance's since
OSSA-2024-001 (CVE-2024-32498), where a crafted qcow2 or VMDK made the hypervisor, or
qemu-img while converting, read files of the host:

- qcow2: ``backing_file`` (none allowed), ``data_file`` (no external data file, by
  feature bit or header extension), ``unknown_features`` (versions 2 and 3 only, no
  unknown incompatible feature);
- vmdk: ``descriptor`` (a create type of ``[image_format] vmdk_allowed_types``, only
  lines qemu's parser needs, extents named without ``/``, at least one extent; beyond
  Glance, no parent disk, which qemu opens by its ``parentFileNameHint`` path) and
  ``footer`` (a streamOptimized footer that agrees with the header);
- gpt: ``mbr`` (a sane protective MBR; ``[image_format] gpt_safety_checks_nonfatal``
  may make it a warning);
- luks: ``version`` (LUKS1 only); qed: ``banned`` (always: nobody runs QED images);
- vhd, beyond Glance: ``differencing`` (a differencing VHD names its parent by path).

A plain MBR disk is reported as ``raw``: it is one, and no hypervisor probes it as
anything else.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import uuid
from collections.abc import Iterable
from typing import ClassVar

from abbild.errors import InvalidImageData
from abbild.plugins import hookimpl

LOG = logging.getLogger(__name__)

#: The disk formats an inspector recognises. Others (ami, ari, aki, ploop) are raw data
#: to the inspectors: such an image is accepted without a virtual size.
INSPECTABLE = frozenset({"raw", "qcow2", "vhd", "vhdx", "vmdk", "vdi", "iso"})
# Formats that are raw disks to a hypervisor: declared raw, they are no mismatch.
_RAW_LIKE = frozenset({"raw", "gpt", "iso"})
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Settings:
    """The ``[image_format]`` options the inspection obeys (Glance's names)."""

    require_image_format_match: bool = True
    vmdk_allowed_types: tuple[str, ...] = ("streamOptimized", "monolithicSparse")
    gpt_safety_checks_nonfatal: tuple[str, ...] = ("mbr",)

    @classmethod
    def from_conf(cls, conf) -> Settings:
        group = conf.image_format
        return cls(
            require_image_format_match=group.require_image_format_match,
            vmdk_allowed_types=tuple(group.vmdk_allowed_types),
            gpt_safety_checks_nonfatal=tuple(group.gpt_safety_checks_nonfatal),
        )


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What the data is.

    :ivar format: the detected format: ``raw`` when nothing specific matched.
    :ivar virtual_size: bytes of the disk it holds, or ``None`` when the format does not
        say (or its structures could not be read).
    :ivar failures: the detected format's failed safety checks: ``{name: why}``.
    :ivar size: bytes of data inspected.
    """

    format: str
    virtual_size: int | None
    failures: dict[str, str]
    size: int


class MultipleFormats(InvalidImageData):
    """The data passes for more than one format: a header hidden in another format is how
    a hostile image gets past a check of the one it claims to be."""

    def __init__(self, formats: Iterable[str]) -> None:
        self.formats = sorted(formats)
        super().__init__(
            f"Image data refused: it matches more than one disk format ({', '.join(self.formats)}). "
            "An image has exactly one format; data that also passes for another can hide what a "
            "hypervisor would really open. Rebuild the image in one format."
        )


# -- the inspectors --------------------------------------------------------------------------


class _Region:
    __slots__ = ("offset", "length", "data")

    def __init__(self, offset: int, length: int) -> None:
        self.offset, self.length, self.data = offset, length, bytearray()


class Inspector:
    """One format's inspector. Subclasses say which regions of the data they want
    (:meth:`want`), read them when they are complete (:meth:`got`) and decide
    :attr:`matched`; :meth:`finish` runs at the end of the data.

    A region is captured across chunks of any size; one asked for after its bytes went
    past is never complete (the formats point forwards; a backwards pointer only costs
    the virtual size). ``tail`` > 0 keeps the last *tail* bytes of the data, for formats
    with a footer.
    """

    name: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pos = 0
        self.matched: bool | None = None  # None: not known yet
        self.virtual_size: int | None = None
        self.failures: dict[str, str] = {}
        self.tail = 0
        self._tail = bytearray()
        self._regions: dict[str, _Region] = {}
        self.start()

    # what subclasses implement
    def start(self) -> None:
        """Ask for the first regions."""

    def got(self, name: str, data: bytes) -> None:
        """Region *name* is complete."""

    def end(self, size: int) -> None:
        """The data ended after *size* bytes; regions still wanted are incomplete."""

    # the machinery
    def want(self, name: str, offset: int, length: int) -> None:
        self._regions[name] = _Region(offset, max(0, length))

    def drop(self, name: str) -> None:
        self._regions.pop(name, None)

    def partial(self, name: str) -> bytes | None:
        """What an incomplete region holds so far (``None``: not wanted)."""
        region = self._regions.get(name)
        return None if region is None else bytes(region.data)

    def fail(self, check: str, why: str) -> None:
        self.failures[check] = f"{self.failures[check]}; {why}" if check in self.failures else why

    @property
    def done(self) -> bool:
        """Nothing more to learn from the data that follows."""
        return self.matched is False or (self.matched is True and not self._regions and not self.tail)

    @property
    def settled(self) -> bool:
        """Whether it matches is known and what it found cannot change, but for checks of
        a footer still to come (or a match on one, for a format with ``tail``)."""
        return self.matched is False or (not self._regions and (self.matched is True or self.tail > 0))

    @property
    def tail_only(self) -> bool:
        """Only the data's last ``tail`` bytes still matter."""
        return self.matched is not False and not self._regions and self.tail > 0

    @property
    def retained(self) -> int:
        """Bytes of the data this inspector holds."""
        return len(self._tail) + sum(len(r.data) for r in self._regions.values())

    def feed(self, chunk: bytes) -> None:
        start = self.pos
        self.pos += len(chunk)
        progress = True
        while progress:  # a completed region may ask for one inside the same chunk
            progress = False
            for name, region in list(self._regions.items()):
                if self._regions.get(name) is not region:
                    continue
                have = region.offset + len(region.data)
                if have < start or have >= self.pos:
                    continue  # missed (asked for too late) or not reached yet
                region.data += chunk[have - start : min(region.offset + region.length, self.pos) - start]
                if len(region.data) >= region.length:
                    del self._regions[name]
                    self.got(name, bytes(region.data))
                    progress = True
        if self.tail:  # after the regions: one of them may have just asked for it
            self._tail += chunk[-self.tail :]
            del self._tail[: -self.tail]

    def skip_to(self, offset: int) -> None:
        """Jump to *offset* (a file's inspection, once only the tail matters)."""
        self.pos = offset
        self._tail.clear()

    def finish(self, size: int) -> None:
        for name, region in list(self._regions.items()):
            if region.length == 0:  # asked for nothing: complete as soon as asked
                del self._regions[name]
                self.got(name, b"")
        self.end(size)
        self._regions.clear()
        self._tail.clear()
        if self.matched is None:
            self.matched = False


class Qcow2(Inspector):
    """QEMU copy-on-write, versions 2 and 3 (docs/interop/qcow2.txt in QEMU)."""

    name = "qcow2"
    MAGIC = b"QFI\xfb"
    DATA_FILE = 1 << 2  # incompatible feature bit 2: the guest data lives in another file
    KNOWN_INCOMPATIBLE = 0x1F  # dirty, corrupt, external data file, compression type, extended L2
    EXT_DATA_FILE = 0x44415441  # header extension naming the external data file

    def start(self) -> None:
        self.want("header", 0, 72)
        self.backing_file: str | None = None

    def got(self, name: str, data: bytes) -> None:
        if name == "header":
            self._header(data)
        elif name == "header3":
            self._header3(data)
        elif name == "extension":
            self._extension(data)
        elif name == "backing_file":
            self.backing_file = data.decode("utf-8", "replace")
            self.failures["backing_file"] = f"it has a backing file, {self.backing_file}, {self._backing_why}"
        elif name == "data_file":
            self.fail("data_file", f"it names {data.decode('utf-8', 'replace')} as its external data file")

    _backing_why = "which a hypervisor would open and read from its own host"

    def _header(self, data: bytes) -> None:
        if data[:4] != self.MAGIC:
            self.matched = False
            return
        self.matched = True
        version, backing_offset, backing_size, cluster_bits, size = struct.unpack_from(">IQIIQ", data, 4)
        self.virtual_size = size
        if version not in (2, 3):
            self.fail("unknown_features", f"it is qcow2 version {version}; only versions 2 and 3 are supported")
            return
        if backing_offset:
            self.failures["backing_file"] = f"it has a backing file, {self._backing_why}"
            if 0 < backing_size <= 1023:
                self.want("backing_file", backing_offset, backing_size)
        # Header extensions follow the header, up to the backing file's name or the end
        # of the first cluster; walked one 8-byte extension header at a time.
        cluster_size = 1 << cluster_bits if 9 <= cluster_bits <= 21 else 1 << 16
        self._extensions_end = backing_offset if 0 < backing_offset < cluster_size else cluster_size
        if version == 3:
            self.want("header3", 72, 32)  # features, refcount order, header length
        else:
            self._next_extension(72)

    def _header3(self, data: bytes) -> None:
        incompatible, header_length = struct.unpack_from(">Q", data)[0], struct.unpack_from(">I", data, 28)[0]
        if incompatible & self.DATA_FILE:
            self.fail("data_file", "its data-file feature bit is set: the data of the guest lives in another file")
        if incompatible & ~self.KNOWN_INCOMPATIBLE:
            unknown = incompatible & ~self.KNOWN_INCOMPATIBLE
            self.fail("unknown_features", f"it uses unknown incompatible features (bits {unknown:#x})")
        if header_length < 104:
            self.fail("unknown_features", f"its version 3 header claims {header_length} bytes, fewer than 104")
        self._next_extension(max(header_length, 104))

    def _next_extension(self, offset: int) -> None:
        if offset + 8 <= self._extensions_end:
            self._extension_at = offset
            self.want("extension", offset, 8)

    def _extension(self, data: bytes) -> None:
        kind, length = struct.unpack(">II", data)
        if kind == 0:
            return  # the end of the extensions
        offset = self._extension_at + 8
        if kind == self.EXT_DATA_FILE:
            self.fail("data_file", "a header extension names an external data file")
            self.want("data_file", offset, min(length, 1023))
        self._next_extension(offset + (length + 7) // 8 * 8)

    def end(self, size: int) -> None:
        head = self.partial("header")
        if (head is not None and head[:4] == self.MAGIC) or self.partial("header3") is not None:
            self.matched = True
            self.fail("unknown_features", "the data ends inside the qcow2 header")


class Qed(Inspector):
    """QEMU enhanced disk: recognised only to be refused."""

    name = "qed"

    def start(self) -> None:
        self.want("header", 0, 56)

    def got(self, name: str, data: bytes) -> None:
        self.matched = data[:4] == b"QED\x00"
        if self.matched:
            self.virtual_size = struct.unpack_from("<Q", data, 48)[0]
            self.fail("banned", "QED images are not accepted: no supported hypervisor runs them")


class Vdi(Inspector):
    """VirtualBox disk image."""

    name = "vdi"

    def start(self) -> None:
        self.want("header", 0, 0x178)

    def got(self, name: str, data: bytes) -> None:
        self.matched = struct.unpack_from("<I", data, 0x40)[0] == 0xBEDA107F
        if self.matched:
            self.virtual_size = struct.unpack_from("<Q", data, 0x170)[0]


class Vhd(Inspector):
    """Virtual PC / Hyper-V VHD: a dynamic or differencing disk starts with a copy of its
    footer; a fixed disk is raw data with the footer as its last sector (qemu never
    probes those, but one declared vhd is one)."""

    name = "vhd"
    COOKIE = b"conectix"
    FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4

    def start(self) -> None:
        self.want("head", 0, 512)
        self.tail = 512
        self.footer_only = False  # a fixed disk: found by its footer alone

    def got(self, name: str, data: bytes) -> None:
        if data.startswith(self.COOKIE):
            self.tail = 0  # the copy at the start tells all
            self._tail.clear()
            self._footer(data)

    def _footer(self, footer: bytes) -> None:
        self.matched = True
        self.virtual_size = struct.unpack_from(">Q", footer, 48)[0]  # the disk's current size
        if struct.unpack_from(">I", footer, 60)[0] == self.DIFFERENCING:
            self.fail("differencing", "it is a differencing VHD, which names its parent disk by a path on the host")

    def end(self, size: int) -> None:
        if self.matched or size < 1024:
            return
        footer = bytes(self._tail)
        fixed = len(footer) == 512 and footer.startswith(self.COOKIE)
        if fixed and struct.unpack_from(">I", footer, 60)[0] == self.FIXED:
            # A fixed disk's footer describes exactly the data before it.
            if struct.unpack_from(">Q", footer, 48)[0] == size - 512:
                self.footer_only = True
                self._footer(footer)


class Vhdx(Inspector):
    """Hyper-V VHDX ([MS-VHDX]): the virtual disk size is a metadata item, found through
    the region table at 192 KiB and the metadata table it points at."""

    name = "vhdx"
    METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
    VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
    MAX_ENTRIES = 2047

    def start(self) -> None:
        self.want("ident", 0, 8)

    def got(self, name: str, data: bytes) -> None:
        if name == "ident":
            self.matched = data == b"vhdxfile"
            if self.matched:
                self.want("regions", 0x30000, 16)
        elif name == "regions":
            signature, _checksum, count = struct.unpack_from("<4sII", data)
            if signature == b"regi" and count <= self.MAX_ENTRIES:
                self.want("region_entries", 0x30010, count * 32)
        elif name == "region_entries":
            for i in range(0, len(data), 32):
                if data[i : i + 16] == self.METADATA_REGION:
                    self._metadata = struct.unpack_from("<Q", data, i + 16)[0]
                    self.want("metadata", self._metadata, 32)
                    return
        elif name == "metadata":
            signature, _reserved, count = struct.unpack_from("<8sHH", data)
            if signature == b"metadata" and count <= self.MAX_ENTRIES:
                self.want("metadata_entries", self._metadata + 32, count * 32)
        elif name == "metadata_entries":
            for i in range(0, len(data), 32):
                if data[i : i + 16] == self.VIRTUAL_DISK_SIZE:
                    item = struct.unpack_from("<I", data, i + 16)[0]
                    self.want("virtual_disk_size", self._metadata + item, 8)
                    return
        elif name == "virtual_disk_size":
            self.virtual_size = struct.unpack("<Q", data)[0]


class Vmdk(Inspector):
    """VMware VMDK: a sparse extent (``KDMV``) with its descriptor embedded, or a text
    descriptor file (what qemu probes as one: comments and blank lines, then
    ``version=1|2|3``). Only the descriptor says where the data lives, so only it is
    checked: its create type, its lines, its extents."""

    name = "vmdk"
    DESCRIPTOR_MAX = (1 << 20) - 1  # qemu reads no more of a descriptor
    PROBE = 2048  # qemu probes a text descriptor in the first 2 KiB
    GD_AT_END = 0xFFFFFFFFFFFFFFFF  # the grain directory (and the real header) is in the footer
    EXTENT_ACCESS = ("rw", "rdonly", "noaccess")

    def start(self) -> None:
        self.want("header", 0, 512)
        self.want("text", 0, self.DESCRIPTOR_MAX)
        self.text: bool | None = None  # a text descriptor file?
        self._sparse = False  # a sparse extent (KDMV, COWD)?
        self.create_type: str | None = None

    def feed(self, chunk: bytes) -> None:
        super().feed(chunk)
        if self.text is None:
            data = self.partial("text")
            if data is not None:
                self._probe_text(data, final=len(data) >= self.PROBE)

    def got(self, name: str, data: bytes) -> None:
        if name == "header":
            self._sparse_header(data)
        elif name == "text":  # all of the descriptor qemu would read
            if self.text is None:
                self._probe_text(data, final=True)
            if self.text:
                self._descriptor(data)
        elif name == "descriptor":
            self._descriptor(data)

    def _probe_text(self, data: bytes, final: bool) -> None:
        """Decide as soon as possible whether the data is a text descriptor."""
        verdict = _text_vmdk(data[: self.PROBE], final)
        if verdict is None:
            return
        self.text = verdict
        if verdict:
            self.matched = True
        else:
            self.drop("text")
            if self.partial("header") is None and not self._sparse:
                self.matched = False

    def _sparse_header(self, data: bytes) -> None:
        magic = data[:4]
        if magic == b"COWD":  # VMDK3 (ESX 2): a sparse extent with no descriptor at all
            self.matched, self._sparse, self.text = True, True, False
            self.drop("text")
            self.virtual_size = struct.unpack_from("<I", data, 12)[0] * 512
            self.fail("descriptor", "it is a VMDK3 (COWD) sparse extent, which has no descriptor")
            return
        if magic != b"KDMV":
            if self.text is False:
                self.matched = False
            return
        self.matched, self._sparse, self.text = True, True, False
        self.drop("text")
        version, _flags, capacity, _grain, desc_sector, desc_sectors = struct.unpack_from("<IIQQQQ", data, 4)
        self._header = data[:64]
        self.virtual_size = capacity * 512
        if version not in (1, 2, 3):
            self.fail("descriptor", f"its sparse header has version {version}; only 1, 2 and 3 exist")
        if desc_sector == 0 or desc_sectors == 0:
            self.fail("descriptor", "it has no embedded descriptor (it is one extent of a multi-file VMDK)")
        else:
            self.want("descriptor", desc_sector * 512, min(desc_sectors * 512, self.DESCRIPTOR_MAX))
        if struct.unpack_from("<Q", data, 56)[0] == self.GD_AT_END:
            self.tail = 1536  # footer marker, footer, end-of-stream marker

    def _descriptor(self, data: bytes) -> None:
        try:
            text = data.split(b"\0", 1)[0].decode("ascii")
        except UnicodeDecodeError:
            self.fail("descriptor", "its descriptor is not ASCII text")
            return
        create_type, extents, virtual, parent, parent_hint = None, 0, 0, None, None
        for raw_line in text.splitlines():
            line = raw_line.strip()
            key = line.split("=", 1)[0].strip()
            if not line or line.startswith("#") or line.lower().startswith("ddb"):
                continue
            if "=" in line and " " not in key:
                value = line.split("=", 1)[1].strip().strip('"')
                if key.lower() == "createtype":
                    create_type = value
                elif key.lower() == "parentcid":
                    parent = value
                elif key.lower() == "parentfilenamehint":
                    parent_hint = value
            elif line.split(" ", 1)[0].lower() in self.EXTENT_ACCESS:
                extents += 1
                if "/" in line:
                    named = line.split('"')[1] if line.count('"') >= 2 else line
                    self.fail("descriptor", f"an extent names a file by its path, {named[:200]}")
                fields = line.split()
                virtual += int(fields[1]) * 512 if len(fields) > 1 and fields[1].isdigit() else 0
            else:
                self.fail("descriptor", f"its descriptor has a line qemu would not expect: {line[:200]}")
        allowed = self.settings.vmdk_allowed_types
        if create_type is None:
            self.fail("descriptor", "its descriptor names no createType")
        elif create_type.lower() not in {t.lower() for t in allowed}:
            self.fail(
                "descriptor",
                f"its create type {create_type} is not allowed "
                f"([image_format] vmdk_allowed_types: {', '.join(allowed) or 'none'})",
            )
        if not extents:
            self.fail("descriptor", "its descriptor names no extent")
        # Beyond Glance: qemu opens the parent of a delta disk (parentCID set) by the
        # path in parentFileNameHint, a backing file by another name.
        if parent is not None and parent.lower() != "ffffffff":
            self.fail("descriptor", f"it is a delta disk whose parent is {parent_hint or 'another file'}")
        self.create_type = create_type
        if not self._sparse:
            self.virtual_size = virtual

    def end(self, size: int) -> None:
        text = self.partial("text")
        if text is not None:  # a descriptor file shorter than what qemu would read
            self.got("text", text)
        if self.matched and self.partial("descriptor") is not None:
            self.fail("descriptor", "the data ends inside the descriptor")
        if self.matched and self.tail:
            self._footer(bytes(self._tail))

    def _footer(self, tail: bytes) -> None:
        """streamOptimized with the grain directory at the end: the footer (a copy of the
        header, with the real grain directory) must agree with the header."""
        if len(tail) < 1536:
            self.fail("footer", "the data is too short for its footer")
            return
        marker, footer, eos = tail[:512], tail[512:1024], tail[1024:]
        zeros = bytes(496)
        value, size, kind = struct.unpack_from("<QII", marker)
        if size != 0 or kind != 3 or marker[16:] != zeros:
            self.fail("footer", "the footer marker is invalid")
        value, size, kind = struct.unpack_from("<QII", eos)
        if value != 0 or size != 0 or kind != 0 or eos[16:] != zeros:
            self.fail("footer", "the end-of-stream marker is invalid")
        ours = struct.unpack_from("<4sI4xQ8xQQ", self._header)  # magic, version, capacity, descriptor
        theirs = struct.unpack_from("<4sI4xQ8xQQ", footer)
        if ours != theirs:
            self.fail("footer", "the footer describes another disk than the header")
        if struct.unpack_from("<Q", footer, 56)[0] == self.GD_AT_END:
            self.fail("footer", "the footer points at yet another footer")


def _text_vmdk(data: bytes, final: bool) -> bool | None:
    """qemu's probe of a text VMDK descriptor over *data* (its first bytes); ``None``
    while undecided (and not *final*)."""
    pos = 0
    while pos < len(data):
        if data[pos : pos + 1] == b"#":
            newline = data.find(b"\n", pos)
            if newline < 0:
                return None if not final else False
            pos = newline + 1
            continue
        if data[pos : pos + 1] == b" ":
            while data[pos : pos + 1] == b" ":
                pos += 1
            if data[pos : pos + 1] == b"\r":
                pos += 1
            if pos >= len(data):
                return None if not final else False
            if data[pos : pos + 1] != b"\n":
                return False
            pos += 1
            continue
        rest = data[pos : pos + 11]
        for version in (b"1", b"2", b"3"):
            for end in (b"\n", b"\r\n"):
                line = b"version=" + version + end
                if rest.startswith(line):
                    return True
                if line.startswith(rest) and not final:
                    return None
        return False
    return None if not final else False


class Iso(Inspector):
    """ISO 9660 or UDF: volume descriptors from sector 16 (32 KiB) on; the size is the
    primary volume descriptor's."""

    name = "iso"
    SECTOR = 2048
    FIRST, LAST = 16, 48
    UDF = (b"BEA01", b"NSR02", b"NSR03", b"TEA01", b"BOOT2", b"CDW02")

    def start(self) -> None:
        self.want("descriptor", self.FIRST * self.SECTOR, 136)
        self._sector = self.FIRST

    def got(self, name: str, data: bytes) -> None:
        kind, ident = data[0], data[1:6]
        if ident == b"CD001":
            self.matched = True
            if kind == 1:  # the primary volume descriptor
                blocks = struct.unpack_from("<I", data, 80)[0]
                block_size = struct.unpack_from("<H", data, 128)[0]
                self.virtual_size = blocks * block_size
                return
            if kind == 255:  # the set terminator
                return
        elif ident in self.UDF:
            if ident in (b"NSR02", b"NSR03"):
                self.matched = True
        else:
            if self.matched is None:
                self.matched = False
            return
        self._sector += 1
        if self._sector < self.LAST:
            self.want("descriptor", self._sector * self.SECTOR, 136)


class Gpt(Inspector):
    """A GPT disk: a protective MBR (a partition of type 0xEE) before the GPT. A plain
    MBR disk is raw."""

    name = "gpt"
    PROTECTIVE = 0xEE

    def start(self) -> None:
        self.want("mbr", 0, 512)

    def got(self, name: str, data: bytes) -> None:
        entries = [struct.unpack_from("<B3sB3sII", data, 446 + 16 * i) for i in range(4)]
        self.matched = data[510:512] == b"\x55\xaa" and any(e[2] == self.PROTECTIVE for e in entries)
        if not self.matched:
            return
        used = [i for i, e in enumerate(entries) if e[2] != 0]
        for i, (boot, start_chs, kind, _end_chs, start_lba, _sectors) in enumerate(entries):
            if boot not in (0x00, 0x80):
                self.fail("mbr", f"MBR partition {i} has an invalid boot flag {boot:#x}")
            if kind == self.PROTECTIVE and (start_chs != b"\x00\x02\x00" or start_lba != 1):
                self.fail("mbr", f"the protective MBR partition {i} does not start at sector 1")
        if used != [0]:
            self.fail("mbr", "the protective MBR defines partitions besides its first one (a hybrid MBR)")

    def end(self, size: int) -> None:
        if self.matched:
            self.virtual_size = size


class Luks(Inspector):
    """LUKS-encrypted data; version 1 only (qemu's ``luks`` format)."""

    name = "luks"

    def start(self) -> None:
        self.want("header", 0, 112)

    def got(self, name: str, data: bytes) -> None:
        self.matched = data[:6] == b"LUKS\xba\xbe"
        if self.matched:
            self.version = struct.unpack_from(">H", data, 6)[0]
            self.payload = struct.unpack_from(">I", data, 104)[0] * 512
            if self.version != 1:
                self.fail("version", f"it is LUKS version {self.version}; only version 1 is supported")

    def end(self, size: int) -> None:
        if self.matched and self.version == 1:
            self.virtual_size = max(0, size - self.payload)


INSPECTORS: tuple[type[Inspector], ...] = (Qcow2, Qed, Vdi, Vhd, Vhdx, Vmdk, Iso, Gpt, Luks)


class Detector:
    """All inspectors side by side over one stream of data (:meth:`feed`, then
    :meth:`finish`)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.inspectors = [cls(self.settings) for cls in INSPECTORS]
        self._active = list(self.inspectors)
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._active:
            for inspector in self._active:
                try:
                    inspector.feed(chunk)
                except Exception:
                    self._broken(inspector)
            self._active = [i for i in self._active if not i.done]

    @staticmethod
    def _broken(inspector: Inspector) -> None:
        """An inspector failed on data it could not parse (a bug, or a structure no
        check foresaw): data of its format is refused rather than passed unchecked; an
        inspector that had not matched drops out."""
        LOG.exception("the %s inspector failed", inspector.name)
        inspector._regions.clear()
        inspector.tail = 0
        inspector._tail.clear()
        if inspector.matched:
            inspector.fail("structure", f"its {inspector.name} structures could not be read")
        else:
            inspector.matched = False

    @property
    def retained(self) -> int:
        """Bytes of the data the inspectors hold (bounded, whatever the image's size)."""
        return sum(i.retained for i in self.inspectors)

    def tail_only(self) -> int | None:
        """How many bytes at the end of the data still matter, when nothing else does."""
        if self._active and all(i.tail_only for i in self._active):
            return max(i.tail for i in self._active)
        return None if self._active else 0

    def skip_to(self, offset: int) -> None:
        for inspector in self._active:
            inspector.skip_to(offset)
        self.size = offset

    def finish(self, size: int | None = None) -> Inspection:
        """The verdict on all data fed (*size*: its length, when not all of it was).

        :raises MultipleFormats:
        """
        size = self.size if size is None else size
        for inspector in self.inspectors:
            try:
                inspector.finish(size)
            except Exception:
                self._broken(inspector)
        matches = {i.name: i for i in self.inspectors if i.matched}
        if set(matches) == {"iso", "gpt"}:  # a hybrid ISO, bootable as CD and as disk
            del matches["gpt"]
        vhd = matches.get("vhd")
        if vhd is not None and vhd.footer_only and set(matches) <= {"vhd", "gpt", "iso"}:
            matches = {"vhd": vhd}  # a fixed VHD: a raw disk (partitioned, or an ISO) and a footer
        if len(matches) > 1:
            raise MultipleFormats(matches)
        if not matches:
            return Inspection("raw", size, {}, size)
        [found] = matches.values()
        return Inspection(found.name, found.virtual_size, dict(found.failures), size)


def inspect(chunks: Iterable[bytes], settings: Settings | None = None) -> Inspection:
    """Inspect the data of *chunks* (read to the end).

    :raises MultipleFormats:
    """
    detector = Detector(settings)
    for chunk in chunks:
        detector.feed(chunk)
    return detector.finish()


def inspect_file(
    path: str | os.PathLike,
    disk_format: str | None = None,
    *,
    container_format: str = "bare",
    settings: Settings | None = None,
) -> Inspection:
    """Inspect a local file, reading only what the inspectors need (its start, and its
    last sectors where a format keeps a footer).

    :param disk_format: when given, the file must pass for it as an upload would
        (:func:`judge`), or :class:`~abbild.errors.InvalidImageData` is raised.
    :raises abbild.errors.InvalidImageData: more than one format matched, or the data
        is not *disk_format* or is unsafe.
    """
    settings = settings or Settings()
    detector = Detector(settings)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while chunk := f.read(_CHUNK):
            detector.feed(chunk)
            tail = detector.tail_only()
            if tail == 0:
                break
            if tail is not None and detector.size < size - tail:
                f.seek(size - tail)
                detector.skip_to(size - tail)
    found = detector.finish(size)
    if disk_format is not None:
        judge(found, disk_format, container_format, settings)
    return found


# -- the verdict on an image's data --------------------------------------------------------------

_REMEDIES = {
    "qcow2": "Upload a self-contained qcow2 (`qemu-img convert -O qcow2 IN OUT` writes one).",
    "vmdk": "Convert it to a single-file VMDK (`qemu-img convert -O vmdk -o subformat=streamOptimized IN OUT`) "
    "or to qcow2.",
    "qed": "Convert it to qcow2 (`qemu-img convert -O qcow2 IN OUT`).",
    "luks": "Encrypt it as LUKS version 1, or upload it unencrypted.",
    "gpt": "Give it a plain protective MBR (`sgdisk --zap` rewrites one); an operator may list the check in "
    "[image_format] gpt_safety_checks_nonfatal to only warn about it.",
    "vhd": "Merge it with its parent into a dynamic or fixed VHD.",
}


def judge(
    found: Inspection, disk_format: str | None, container_format: str | None, settings: Settings, *, log: bool = True
) -> dict:
    """Glance's rules for data of an image declared *disk_format*.

    Safety failures are always refused (the GPT checks of
    ``gpt_safety_checks_nonfatal`` only warn). Only for ``container_format`` ``bare``:
    the detected format must be the declared one, where the data then gives the virtual
    size; raw data is fine for a format no inspector knows (ami, ari, aki, ploop);
    declared raw, data in another (safe) format is accepted with a warning (a
    hypervisor told "raw" never probes it); any other mismatch is refused when
    ``require_image_format_match`` is set, else a warning.

    :returns: the image attributes the data decides: ``{"virtual_size": n}`` or ``{}``.
    :raises abbild.errors.InvalidImageData: with a message the image's owner can act on.
    """
    fatal = {}
    for check, why in found.failures.items():
        if found.format == "gpt" and check in settings.gpt_safety_checks_nonfatal:
            if log:
                LOG.warning(
                    "image data: GPT safety check %r failed (%s); only a warning: gpt_safety_checks_nonfatal",
                    check,
                    why,
                )
        else:
            fatal[check] = why
    if fatal:
        checks = ", ".join(fatal)
        raise InvalidImageData(
            f"Image data refused: it is a {found.format} image that fails the safety "
            f"check{'s' if len(fatal) > 1 else ''} {checks}: {'; '.join(fatal.values())}. "
            f"It is refused whatever its disk_format{f' ({disk_format})' if disk_format else ''}. "
            f"{_REMEDIES.get(found.format, '')}".rstrip()
        )
    if container_format != "bare" or disk_format is None:
        return {}
    if found.format == disk_format:
        return {} if found.virtual_size is None else {"virtual_size": found.virtual_size}
    if found.format == "raw" and disk_format not in INSPECTABLE:
        return {}
    if disk_format == "raw":
        if found.format not in _RAW_LIKE and log:
            LOG.warning(
                "image data declared raw is a %s image; accepted, a hypervisor told raw never probes it", found.format
            )
        return {"virtual_size": found.size}
    what = "no disk format abbild knows (raw data)" if found.format == "raw" else f"a {found.format} image"
    message = (
        f"Image data refused: it is {what}, but the disk_format of the image is {disk_format}. "
        f"Set disk_format to what the data is (PATCH the queued image) and upload again, or upload "
        f"{disk_format} data. [image_format] require_image_format_match refuses data that is not its disk_format."
    )
    if settings.require_image_format_match:
        raise InvalidImageData(message)
    if log:
        LOG.warning("%s (accepted: require_image_format_match is off)", message)
    return {}


class FormatCheck:
    """A :class:`~abbild.streams.DataCheck`: inspects the data as it streams past and
    judges it (:func:`judge`) at the end. Data whose refusal is certain before its end
    (its header is unsafe, or it is not its disk_format) is refused at once, so a large
    image is not stored only to be removed.

    :param refuse: ``False`` for an image whose data is already kept (the auditor filling
        in virtual sizes): :meth:`finish` never raises and decides nothing it would refuse.
    """

    # What it keeps of a chunk (a header region, the tail) it copies: an upload may lend
    # it chunks whose memory is reused afterwards (abbild.streams.ImageStream.lent).
    copies_chunks = True

    def __init__(
        self, disk_format: str | None, container_format: str | None, settings: Settings, *, refuse: bool = True
    ) -> None:
        self.disk_format, self.container_format = disk_format, container_format
        self.settings, self.refuse = settings, refuse
        self.detector = Detector(settings)
        self._early = refuse

    def feed(self, chunk: bytes) -> None:
        self.detector.feed(chunk)
        if self._early:
            self._refuse_early()

    def _refuse_early(self) -> None:
        """Raise if every inspector has settled and the verdict is already a refusal.
        What only the end can add (a footer's checks, a fixed VHD's footer) can only
        refuse more, except for a declared vhd, which waits for its footer."""
        inspectors = self.detector.inspectors
        if not all(i.settled for i in inspectors):
            return
        self._early = False  # one verdict so far is enough: finish() gives the last word
        if self.disk_format == "vhd":
            return
        matches = [i for i in inspectors if i.matched]
        if len(matches) > 1:
            return  # finish() sorts out hybrids and refuses the rest
        if matches:
            found = Inspection(matches[0].name, None, dict(matches[0].failures), self.detector.size)
        else:
            found = Inspection("raw", None, {}, self.detector.size)
        judge(found, self.disk_format, self.container_format, self.settings, log=False)

    def finish(self) -> dict:
        try:
            found = self.detector.finish()
            return judge(found, self.disk_format, self.container_format, self.settings)
        except InvalidImageData as exc:
            if self.refuse:
                raise
            LOG.warning("image data would be refused today: %s", exc)
            return {}


class FormatInspection:
    """Built-in: inspects every upload's, staged and imported data (the
    ``abbild_data_checks`` hook) under the ``[image_format]`` options.

    Staged data gets the safety checks only: the import steps may still turn it into its
    disk_format (decompress it), and the data they produce is judged in full on import.
    """

    def __init__(self) -> None:
        self.settings = Settings()

    @hookimpl
    def abbild_configure(self, conf):
        self.settings = Settings.from_conf(conf)

    @hookimpl
    def abbild_data_checks(self, image, purpose):
        disk_format = None if purpose == "stage" else image.disk_format
        return FormatCheck(disk_format, image.container_format, self.settings)
