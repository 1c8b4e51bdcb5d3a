"""Userspace LUKS1/LUKS2 containers, byte-compatible with cryptsetup (layer 1b).

Depends only on hammerfs.blockdev and hammerfs.errors. Modules: ``xts`` (batched
AES-XTS-plain64; tweaks by the C helper ``_xtsfast``, or ``xts_numpy`` if unbuilt), ``af``
(anti-forensic splitter), ``kdf`` (PBKDF2/Argon2 and cost benchmarks), ``luks1``/``luks2``
(on-disk headers), ``keyslots`` (sealing the volume key), ``container`` (format, unlock, slot
management, dump), ``device`` (LuksDevice, the decrypted payload as a BlockDevice),
``passphrase`` (key files and prompts), ``convert`` (LUKS1 <-> LUKS2)."""

from __future__ import annotations

from hammerfs.blockdev.base import BlockDevice
from hammerfs.errors import HammerError

LUKS_MAGIC = b"LUKS\xba\xbe"


def open_payload(device: BlockDevice, passphrase: bytes, *, slot: int | None = None,
                 readonly: bool | None = None, data_device: BlockDevice | None = None
                 ) -> BlockDevice:
    """Unlock the container on ``device`` and return its payload as a LuksDevice.  With a
    detached header (cryptsetup --header), ``device`` holds the header and ``data_device``
    the payload."""
    from hammerfs.luks.container import open_container
    from hammerfs.luks.passphrase import warn

    container = open_container(device)
    for notice in container.notices():
        warn(notice)
    _, key = container.unlock(passphrase, slot)
    return payload_device(container, key, readonly=readonly, data_device=data_device)


def payload_device(container, volume_key: bytes, *, readonly: bool | None = None,
                   data_device: BlockDevice | None = None) -> BlockDevice:
    """The decrypted payload of an unlocked container, on ``data_device`` if the header is
    detached (the LuksDevice then owns and closes ``data_device``, not the header's)."""
    from hammerfs.luks.device import LuksDevice

    if data_device is None and container.data_offset == 0:
        raise HammerError("this LUKS header is detached (data offset 0): give the data "
                          "device and the header file with --header")
    data = data_device if data_device is not None else container.dev
    size = container.data_size(data.size)
    if size < container.sector_size:
        raise HammerError("the LUKS data device is too small (smaller than one sector)")
    if container.data_offset + size > data.size:
        # Not checked when the header is read (cryptsetup neither): a damaged offset makes
        # only the payload unusable, the header still shows and its slots still test.
        raise HammerError("the LUKS data segment lies beyond the end of the device")
    return LuksDevice(data, volume_key, data_offset=container.data_offset, data_size=size,
                      sector_size=container.sector_size, iv_tweak=container.iv_tweak,
                      readonly=readonly)


def unlock_if_luks(device: BlockDevice, key_file: str | None = None) -> BlockDevice:
    """Return ``device`` itself if it holds no LUKS header, else its unlocked payload
    (passphrase from ``key_file``, or a hidden prompt on a terminal)."""
    from hammerfs.luks.container import is_luks
    from hammerfs.luks.passphrase import get_passphrase

    if not is_luks(device):
        return device
    passphrase = get_passphrase(key_file, "Enter passphrase for the encrypted volume: ")
    return open_payload(device, passphrase)
