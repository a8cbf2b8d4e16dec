"""Guest images for the vmcore tests: a boot sector that keeps dirtying guest memory.

An idle diskless guest migrates in a blink (its memory is almost all zero pages). To hold a migration
open -- for a timeout, or to power a host off in the middle of it -- the guest must dirty memory faster
than the transfer can follow. This boot sector (16-bit real mode, no OS) rewrites 512 KiB of low memory
with a new value on every pass, forever; with ``bandwidthMiBps: 1`` the migration never converges.
"""

from __future__ import annotations

from pathlib import Path

# cli; start: mov dx,0x1000; seg: mov es,dx; xor di,di; mov cx,0x8000; inc bx; mov ax,bx; rep stosw;
# add dx,0x1000; cmp dx,0x9000; jb seg; jmp start
_DIRTIER = bytes.fromhex(
    "FA BA0010 8EC2 31FF B90080 43 89D8 F3AB 81C20010 81FA0090 72EA EBE5".replace(" ", "")
)


def memory_dirtier_image(directory: Path) -> Path:
    """A 1 MiB raw disk whose boot sector dirties memory without end (written once per directory)."""
    path = directory / "memory-dirtier.img"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        sector = _DIRTIER + b"\0" * (510 - len(_DIRTIER)) + b"\x55\xaa"
        path.write_bytes(sector + b"\0" * (1024 * 1024 - len(sector)))
    return path
