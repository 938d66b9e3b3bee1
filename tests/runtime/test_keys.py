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


def test_keys_list_and_revoke_edit_the_allow_list_and_signal_the_ground(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    allowed = tmp_path / "allowed"
    for name in ("sat-1", "sat-2"):
        new_keypair(name, tmp_path / "k", allow_dir=allowed)
    assert main(["keys", "list", "--allow", str(allowed), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    pub = zmq.auth.load_certificate(str(tmp_path / "k" / "sat-1.key"))[0].decode()
    assert [k["name"] for k in listed] == ["sat-1", "sat-2"] and listed[0]["public_key"] == pub

    assert main(["keys", "revoke", "nobody", "--allow", str(allowed)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nobody.key" in err and "sat-1, sat-2" in err

    # A stand-in for the running ground: a process that reports the SIGHUP it gets.
    got = tmp_path / "hup"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, signal, sys, time\n"
            f"signal.signal(signal.SIGHUP, lambda *a: pathlib.Path({str(got)!r}).write_text('hup'))\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        pidfile = tmp_path / "ground.pid"
        pidfile.write_text(f"{child.pid}\n")
        assert main(["keys", "revoke", "sat-1", "--allow", str(allowed), "--pidfile", str(pidfile)]) == 0
        out = capsys.readouterr().out
        assert pub in out and f"pid {child.pid}" in out
        end = time.monotonic() + 10
        while not got.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert got.exists(), "the ground was not signalled"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert sorted(p.name for p in allowed.iterdir()) == ["sat-2.key"], (
        "the folder must hold no half-revoked file"
    )
    # A stale pid file: no ground runs; the key is revoked all the same, and the operator is told.
    assert main(["keys", "revoke", "sat-2", "--allow", str(allowed), "--pidfile", str(pidfile)]) == 0
    assert "no process" in capsys.readouterr().out
    assert not (allowed / "sat-2.key").exists()
    assert os.listdir(allowed) == []
