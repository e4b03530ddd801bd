"""mgm.video: the frame-numbering rule (B-frames, missing timestamps), span decode = full decode, probe, errors."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from media_util import write_tone

from mgm.prep.quirks import patch_avi_frames
from mgm.prep.synth import EncodeSpec, encode, render_clip
from mgm.vectors import MV_DTYPE, motion_vectors
from mgm.video import VideoError, decode_frames, demux, frame_numbers, frames_present, open_video
from mgm.video_probe import declared_end, probe

FRAMES, GOP = 30, 12


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A B-frame H.264 clip (GOP 12, up to 2 B-frames), the same bitstream as a raw .h264 file (no timestamps),
    a VP9 encode, and broken files."""
    d = tmp_path_factory.mktemp("video")
    frames, _ = render_clip("two", seed=11, size=(120, 160), num_frames=FRAMES)
    out = {"bframes": encode(frames, d / "b.mp4", "libx264", EncodeSpec(gop=GOP, bframes=2))}
    out["raw"] = d / "b.h264"
    with av.open(str(out["bframes"])) as i, av.open(str(out["raw"]), "w", format="h264") as o:
        s_out = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(video=0):
            if p.dts is not None:
                p.stream = s_out
                o.mux(p)
    out["vp9"] = encode(frames, d / "v.webm", "libvpx-vp9", EncodeSpec(gop=GOP))
    fast = encode(frames, d / "fast.mp4", "libx264", EncodeSpec(gop=GOP), container_options={"movflags": "faststart"})
    data = fast.read_bytes()  # moov first: the header promises every frame, the data stops half way
    out["truncated"] = d / "truncated.mp4"
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["garbage"] = d / "garbage.mp4"
    out["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    out["empty"] = d / "empty.mp4"
    out["empty"].write_bytes(b"")
    out["audio"] = write_tone(d / "tone.m4a")
    for name, src in (("webm_cut", out["vp9"]), ("avi_cut", encode(frames, d / "m.avi", "mpeg4", EncodeSpec(gop=GOP)))):
        out[name] = d / f"{name}{src.suffix}"  # cut at 60%: no index or error says so, only the size fields
        out[name].write_bytes(src.read_bytes()[: len(src.read_bytes()) * 6 // 10])
    out["avi"] = d / "m.avi"
    out["pts_eq_dts"] = d / "pts_eq_dts.mp4"  # the B-frame clip muxed with pts = dts: timestamps in decode order
    with av.open(str(out["bframes"])) as i, av.open(str(out["pts_eq_dts"]), "w") as o:
        s_out = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(video=0):
            if p.dts is not None:
                p.pts, p.stream = p.dts, s_out
                o.mux(p)
    return out


def plain_decode(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """Every frame PyAV outputs, as RGB, and its picture type: the reference numbering (output order)."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [int(f.pict_type) for f in frames]


def test_frame_numbers_rank_timestamps_and_give_up_on_missing_or_repeated_ones() -> None:
    np.testing.assert_array_equal(frame_numbers([0, 3072, 1024, 2048, 4096]), [0, 3, 1, 2, 4])  # I P B B P
    np.testing.assert_array_equal(frame_numbers([-2, 5, 1]), [0, 2, 1])
    # packets before an edit list's start are decoded but never shown: no number, the others rank without them
    np.testing.assert_array_equal(frame_numbers([-2, 1, -1, 0], [True, False, True, False]), [-1, 1, -1, 0])
    assert frame_numbers([0, 0, 1], [True, False, False]) is not None  # a repeat among discarded packets is fine
    assert frame_numbers([0, None, 2]) is None
    assert frame_numbers([0, 1, 1, 2]) is None
    assert frame_numbers([]) is None


@pytest.mark.parametrize("name", ["bframes", "raw"])
def test_frames_are_numbered_in_output_order(clips: dict[str, Path], name: str) -> None:
    ref, types = plain_decode(clips[name])
    assert len(ref) == FRAMES and 3 in types, "the fixture should contain B-frames"
    with open_video(clips[name]) as c:
        pk = demux(c, str(clips[name]))
        if name == "bframes":  # decode order differs from presentation order: the numbers are the pts ranks
            assert pk.reordered and sorted(pk.index.tolist()) == list(range(FRAMES))
            assert pk.index.tolist() != list(range(FRAMES))
        else:  # a raw H.264 stream has no timestamps: frames are counted as the decoder outputs them
            assert pk.index is None and not pk.reordered
        got = [(i, to_ndarray(f)) for i, f in pk.frames()]
    assert [i for i, _ in got] == list(range(FRAMES))
    assert all(np.array_equal(rgb, ref[i]) for i, rgb in got)


def to_ndarray(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


@pytest.mark.parametrize("name", ["bframes", "raw", "vp9"])
def test_chosen_frames_equal_a_plain_full_decode(clips: dict[str, Path], name: str) -> None:
    ref, _ = plain_decode(clips[name])
    for indices in ([0, 1, 2], [5, 11, 12, 13, 13, 25], [14, 29], [FRAMES - 1]):  # across and inside GOPs
        got = decode_frames(str(clips[name]), indices)
        assert sorted(got) == sorted(set(indices))
        for i, rgb in got.items():
            assert np.array_equal(rgb, ref[i]), f"{name}: frame {i}"  # the reused swscale context == to_ndarray
    # the same index is the same picture with and without timestamps
    mp4, raw = decode_frames(str(clips["bframes"]), [7, 20]), decode_frames(str(clips["raw"]), [7, 20])
    assert all(np.array_equal(mp4[i], raw[i]) for i in (7, 20))


def test_decoding_from_the_key_frame_before_a_frame(clips: dict[str, Path]) -> None:
    with open_video(clips["bframes"]) as c:
        pk = demux(c, str(clips["bframes"]))
        assert pk.complete and not pk.error and len(pk.packets) == FRAMES
        for i, key in ((0, 0), (11, 0), (12, 12), (20, 12), (29, 24)):  # GOP 12: key frames 0, 12, 24
            first = pk.key_before(i)
            assert pk.packets[first].is_keyframe and pk.index[first] == key
        numbers = [i for i, _ in pk.frames(pk.key_before(20))]
    assert numbers == list(range(12, FRAMES))


def test_probe_reads_headers_packets_and_frames(clips: dict[str, Path]) -> None:
    path = clips["bframes"]
    quick = probe(path)
    assert (quick.codec, quick.size, quick.packets, quick.frames) == ("h264", (120, 160), FRAMES, None)
    assert probe(path.read_bytes(), name="clip") == quick  # a file held in memory probes the same
    full = probe(path, decode=True, mv_frames=3)
    assert full.frames == FRAMES and full.key_frames == [0, 12, 24] and full.has_mvs and full.size == (120, 160)
    assert not probe(path, decode=True).has_mvs  # not asked for
    vp9 = probe(clips["vp9"], decode=True, mv_frames=3)
    assert vp9.codec == "vp9" and vp9.frames == FRAMES and not vp9.has_mvs and vp9.key_frames[0] == 0


def test_motion_vector_records_match_pyav(clips: dict[str, Path]) -> None:
    with av.open(str(clips["bframes"])) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"flags2": "+export_mvs"}
        seen = 0
        for f in c.decode(s):
            raw, sd = motion_vectors(f), f.side_data.get("MOTION_VECTORS")
            if f.key_frame:
                assert raw is None
            elif raw is not None:
                ref = sd.to_ndarray()
                got = raw.view(MV_DTYPE)
                assert all(np.array_equal(got[k], ref[k]) for k in ref.dtype.names)
                seen += 1
    assert seen > FRAMES // 2


@pytest.mark.parametrize(
    ("name", "reason"),
    [("missing", "missing"), ("empty", "empty"), ("garbage", "unreadable"), ("audio", "no_video_stream")],
)
def test_unusable_files_raise_one_error_naming_the_file(clips: dict[str, Path], name: str, reason: str) -> None:
    path = clips.get(name, clips["garbage"].with_name("nope.mp4"))
    for call in (lambda: probe(path), lambda: decode_frames(str(path), [0])):
        with pytest.raises(VideoError) as info:
            call()
        assert info.value.reason == reason and info.value.path == str(path) and str(path) in str(info.value)
        assert info.value.detail
    if name != "missing":
        with pytest.raises(VideoError, match=f"in-memory.mp4: {reason}"):
            probe(path.read_bytes(), name="in-memory.mp4")


def test_a_truncated_file_is_found_when_decoded(clips: dict[str, Path]) -> None:
    path = clips["truncated"]
    assert 0 < probe(path).packets < FRAMES  # demuxing alone reads what is there
    with pytest.raises(VideoError) as info:
        probe(path, decode=True)
    e = info.value
    assert e.reason == "truncated" and 0 < e.frames_read < FRAMES and str(path) in str(e)


def test_timestamps_against_output_order_are_caught_and_frames_counted(clips: dict[str, Path]) -> None:
    """pts == dts with B-frames: unique timestamps that contradict the output order. Reads renumber by counting
    (FrameOrderError inside), so frame i is the i-th frame FFmpeg outputs, with or without a list count."""
    path = clips["pts_eq_dts"]
    ref, types = plain_decode(path)
    assert 3 in types and len(ref) < FRAMES  # B-frames; the first packet lies before the edit list's start
    info = probe(path, decode=True)
    assert (info.frames, info.promised, info.pts_order) == (len(ref), FRAMES, False)  # the header is a hint
    for num_frames in (None, len(ref)):
        got = decode_frames(str(path), [3, 14, 15, len(ref) - 1], num_frames)
        assert all(np.array_equal(rgb, ref[i]) for i, rgb in got.items()), num_frames
    assert probe(clips["bframes"], decode=True).pts_order
    # with the list's count a counted read need not start at the first packet: at an IDR picture, whose index is
    # the packets before it that FFmpeg shows
    with open_video(path) as c:
        pk = demux(c, str(path), num_frames=len(ref), count=True)
        first = pk.key_before(len(ref) - 1)
        assert first > 0 and pk.packets[first].is_keyframe
        got = list(pk.frames(first))
    assert got[0][0] == info.key_frames[-1] and [i for i, _ in got] == list(range(got[0][0], len(ref)))
    assert all(np.array_equal(to_ndarray(f), ref[i]) for i, f in got)


@pytest.mark.parametrize("name", ["truncated", "webm_cut", "avi_cut"])
def test_files_cut_short_are_truncated_only_when_a_read_fails(clips: dict[str, Path], name: str) -> None:
    """MP4 and AVI cut mid-packet: the last packet reads short, `truncated`, naming the frames read. WebM cut
    short: FFmpeg reads every block that is there without an error, so the file is kept with those frames; only
    its Segment size (as the MP4 index and the AVI RIFF size do) says bytes are missing (`short_by`, a note)."""
    path = clips[name]
    with open_video(path) as c:
        assert declared_end(c, path.read_bytes()[:256]) > path.stat().st_size
    if name == "webm_cut":
        info = probe(path, decode=True)
        assert 0 < info.frames < FRAMES and info.short_by > 0
        assert decode_frames(str(path), [info.frames - 1], info.frames)  # the readers agree
    else:
        with pytest.raises(VideoError) as err:
            probe(path, decode=True)
        assert err.value.reason == "truncated" and f"after {err.value.frames_read} frames" in err.value.detail
    whole = {"truncated": clips["bframes"], "webm_cut": clips["vp9"], "avi_cut": clips["avi"]}[name]
    with open_video(whole) as c:  # complete files say no more than they hold
        assert 0 < declared_end(c, whole.read_bytes()[:256]) <= whole.stat().st_size
    assert probe(whole, decode=True).short_by == 0


def test_an_avi_header_promising_more_frames_is_only_a_hint(clips: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "lies.avi"
    path.write_bytes(clips["avi"].read_bytes())
    patch_avi_frames(path, 10)
    info = probe(path, decode=True, mv_frames=3)
    assert (info.frames, info.promised, info.has_mvs) == (FRAMES, 10 * FRAMES, True)  # MPEG-4: vectors, read


def test_a_list_count_the_file_no_longer_holds_is_named(clips: dict[str, Path]) -> None:
    with open_video(clips["bframes"]) as c:
        assert frames_present(c, 5) == 5 + 16  # demuxing stops a reorder margin past the frames asked for
    with open_video(clips["truncated"]) as c:
        assert frames_present(c, FRAMES) < FRAMES
    with pytest.raises(VideoError, match=f"holds {FRAMES} frames, its file list says {FRAMES + 5}") as info:
        decode_frames(str(clips["bframes"]), [0], num_frames=FRAMES + 5)
    assert info.value.reason == "changed"
