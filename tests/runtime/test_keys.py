from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq.auth

from orbitfl.cli import main
from orbitfl.runtime.keys import new_keypair


def test_keys_new_writes_a_usable_pair_with_a_private_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["keys", "new", "sat-7", "--dir", str(tmp_path / "k"), "--allow", str(tmp_path / "allowed")])
        == 0
    )
    public, secret = zmq.auth.load_certificate(str(tmp_path / "k" / "sat-7.key_secret"))
    assert len(public) == 40 and len(secret) == 40
    assert zmq.auth.load_certificate(str(tmp_path / "allowed" / "sat-7.key"))[0] == public
    assert stat.S_IMODE((tmp_path / "k" / "sat-7.key_secret").stat().st_mode) == 0o600
    assert "sat-7.key_secret" in capsys.readouterr().out


def test_keys_new_refuses_to_overwrite_and_bad_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new_keypair("ground", tmp_path)
    before = (tmp_path / "ground.key_secret").read_bytes()
    assert main(["keys", "new", "ground", "--dir", str(tmp_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "ground.key_secret").read_bytes() == before
    assert main(["keys", "new", "../evil", "--dir", str(tmp_path)]) == 2
    assert "key name" in capsys.readouterr().err
    with pytest.raises(ValueError, match="key name"):
        new_keypair("", tmp_path)
