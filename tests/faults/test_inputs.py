from pathlib import Path

import av

from tests.faults.conftest import EXPECT


def test_fault_files_have_the_fault(bad_videos: dict[str, Path]) -> None:
    assert not bad_videos["missing"].exists()
    assert bad_videos["zero_length"].stat().st_size == 0
    with av.open(str(bad_videos["chroma_444"])) as c:
        assert c.streams.video[0].format.name == "yuv444p"
    with av.open(str(bad_videos["odd_size"])) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (321, 241)
    with av.open(str(bad_videos["vfr"])) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert len(set(b - a for a, b in zip(pts, pts[1:]))) > 1
    assert set(bad_videos) == set(EXPECT)
