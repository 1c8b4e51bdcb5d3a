import pytest

from hammerfs.errors import HammerError
from hammerfs.store.pfs import parse_volume_spec


def test_volume_spec(tmp_path):
    vol = tmp_path / "a:b.img"
    vol.write_bytes(b"")
    assert parse_volume_spec(str(vol)) == (str(vol), 0)
    assert parse_volume_spec(f"{vol}:3") == (str(vol), 3)
    assert parse_volume_spec(f"{tmp_path}/missing:3") == (f"{tmp_path}/missing:3", 0)
    with pytest.raises(HammerError):
        parse_volume_spec(f"{vol}:70000")
