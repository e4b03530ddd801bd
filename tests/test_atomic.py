from pathlib import Path

import pytest

from mgm.atomic import atomic_write


def test_atomic_write_replaces_whole_file_or_keeps_the_old(tmp_path: Path) -> None:
    dst = tmp_path / "sub" / "out.txt"
    with atomic_write(dst, "w") as f:
        f.write("first")
    assert dst.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_write(dst, "w") as f:
        f.write("torn")
        raise RuntimeError("disk full")
    assert dst.read_text() == "first"  # the old file stands
    assert sorted(p.name for p in dst.parent.iterdir()) == ["out.txt"]  # and no temporary file is left


def test_atomic_write_custom_temporary_name(tmp_path: Path) -> None:
    dst, tmp = tmp_path / "a.bin", tmp_path / ".a.bin.1.tmp"
    with atomic_write(dst, "wb", tmp=tmp, sync_dir=True) as f:
        assert Path(f.name) == tmp and not dst.exists()  # written beside, renamed only at the end
        f.write(b"x")
    assert dst.read_bytes() == b"x" and not tmp.exists()


def test_two_writers_of_one_file_each_write_whole_and_the_last_rename_wins(tmp_path: Path, monkeypatch) -> None:
    # Two processes (pids 1 and 2) writing the same list at once: each writes its own temporary file, so neither
    # truncates the other's and both renames succeed; the file ends whole, as the last writer wrote it.
    import os

    dst = tmp_path / "train.csv"
    monkeypatch.setattr(os, "getpid", lambda: 1)
    with atomic_write(dst, "w") as a:
        a.write("first writer\n" * 100)
        monkeypatch.setattr(os, "getpid", lambda: 2)
        with atomic_write(dst, "w") as b:
            b.write("second writer\n")
        assert dst.read_text() == "second writer\n"
    assert dst.read_text() == "first writer\n" * 100 and not list(tmp_path.glob("*.tmp"))
