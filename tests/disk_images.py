"""Real disk images for tests, built with the tools that make them in the wild (qemu-img,
xorriso, sgdisk), plus the few hostile ones no tool writes on purpose (import this; it is
no test module)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

from abbild.testing.backends import backend_unavailable

MIB = 1 << 20


def need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        backend_unavailable(f"{tool} is not installed (`make install-test` installs it)")
    return path


def qemu_img(directory: Path, fmt: str, size: str = "1M", *options: str, name: str | None = None) -> Path:
    """``qemu-img create -f fmt [options] <file> size``: the file."""
    path = Path(directory) / (name or f"disk.{fmt}")
    subprocess.run([need("qemu-img"), "create", "-q", "-f", fmt, *options, str(path), size], check=True)
    return path


def virtual_size(path: Path, fmt: str) -> int:
    """The virtual size ``qemu-img info`` reads from *path* opened as *fmt*."""
    info = subprocess.run(
        [need("qemu-img"), "info", "--output=json", "-f", fmt, str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(info.stdout)["virtual-size"]


def qcow2(directory: Path, size: str = "1M") -> bytes:
    """A small, clean qcow2 image's bytes."""
    return qemu_img(directory, "qcow2", size, name=f"clean-{size}.qcow2").read_bytes()


def luks(directory: Path, size: str = "1M") -> Path:
    # A short key derivation (10 ms, not qemu's 2 s): the tests need the header, not the
    # strength. qemu times the derivation with the thread's CPU clock and now and then
    # fails ("Unable to get accurate CPU usage"), more often on a busy host: try again.
    for attempt in range(10):
        try:
            return qemu_img(
                directory, "luks", size, "--object", "secret,id=s0,data=pw", "-o", "key-secret=s0,iter-time=10"
            )
        except subprocess.CalledProcessError:
            if attempt == 9:
                raise
            (Path(directory) / "disk.luks").unlink(missing_ok=True)
    raise AssertionError("unreachable")


def iso(directory: Path) -> Path:
    """An ISO 9660 image of one small file, made by xorriso (mkisofs emulation)."""
    tree = Path(directory) / "iso-tree"
    tree.mkdir(exist_ok=True)
    (tree / "hello.txt").write_text("hello\n")
    path = Path(directory) / "disk.iso"
    subprocess.run([need("xorriso"), "-as", "mkisofs", "-quiet", "-o", str(path), str(tree)], check=True)
    return path


def gpt(directory: Path, size: int = 4 * MIB, name: str = "gpt.raw") -> Path:
    """A raw disk with a GPT (one partition), partitioned by sgdisk."""
    path = Path(directory) / name
    with path.open("wb") as f:
        f.truncate(size)
    subprocess.run([need("sgdisk"), "-n", "1:2048:0", str(path)], check=True, capture_output=True)
    return path


def hybrid_iso(directory: Path) -> Path:
    """An ISO that is also a GPT disk (bootable from CD and from disk): sgdisk writes a
    protective MBR and a GPT into the ISO's unused system area and its padding."""
    path = iso(directory)
    subprocess.run([need("sgdisk"), "-o", str(path)], check=True, capture_output=True)
    return path


def mbr(directory: Path, size: int = 4 * MIB) -> Path:
    """A raw disk with a plain MBR partition table (one Linux partition)."""
    path = Path(directory) / "mbr.raw"
    sector = bytearray(512)
    struct.pack_into("<B3sB3sII", sector, 446, 0x80, b"\x00\x21\x00", 0x83, b"\xfe\xff\xff", 2048, size // 512 - 2048)
    sector[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(sector) + bytes(size - 512))
    return path


def vmdk_descriptor(create_type: str, extent: str) -> bytes:
    """A text VMDK descriptor (what `qemu-img create -o subformat=monolithicFlat` writes
    next to its data), naming *extent* as its one extent file."""
    return (
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        f'createType="{create_type}"\n\n# Extent description\nRW 2048 FLAT "{extent}" 0\n\n'
        '# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n'
    ).encode()


def stream_optimized_with_footer(directory: Path, *, break_footer: bool = False) -> bytes:
    """A streamOptimized VMDK as VMware writes it: the header's grain directory offset
    says "at the end", and a footer (marker, the real header, end-of-stream marker)
    closes the file. qemu-img writes the offset into the header instead, so the footer
    is added here. *break_footer* makes the footer describe another disk."""
    data = bytearray(qemu_img(directory, "vmdk", "1M", "-o", "subformat=streamOptimized").read_bytes())
    footer = bytearray(data[:512])
    struct.pack_into("<Q", data, 56, 0xFFFFFFFFFFFFFFFF)
    if break_footer:
        struct.pack_into("<Q", footer, 12, 4096)  # another capacity
    marker = struct.pack("<QII", 1, 0, 3).ljust(512, b"\0")
    end = bytes(512)
    return bytes(data) + marker + bytes(footer) + end
