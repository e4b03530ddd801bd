"""mgm.motion: vector rasterization, frame numbering, span reads, clip maps and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from media_util import write_tone

from mgm.motion import FAST_OPTIONS, MotionField, MotionReadError, read_motion, read_span, span_of
from mgm.prep.synth import EncodeSpec, encode, make_clip, render_clip


def truth(mp4: Path) -> dict:
    return json.loads(mp4.with_suffix(".json").read_text())


@pytest.fixture(scope="session")
def bframe_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `single` synthetic clip of seed 7 encoded with 2 B-frames (and its no-B twin next to it)."""
    d = tmp_path_factory.mktemp("bframes")
    make_clip(d / "b", "single", seed=7, bframes=2, vp9_twin=False)
    make_clip(d / "p", "single", seed=7, bframes=0, vp9_twin=False)
    return d / "b.mp4"


@pytest.fixture(scope="session")
def odd_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Codecs without motion vectors, plus broken files."""
    d = tmp_path_factory.mktemp("odd")
    frames, _ = render_clip("single", seed=3, size=(120, 160), num_frames=24)
    out = {}
    for name, codec in [("mjpeg", "mjpeg"), ("cinepak", "cinepak")]:
        pix_fmt = "yuvj420p" if codec == "mjpeg" else "rgb24"
        out[name] = encode(frames, d / f"{name}.avi", codec, options={}, pix_fmt=pix_fmt)
    out["intra"] = encode(frames, d / "intra.mp4", "libx264", EncodeSpec(gop=1))
    good = encode(frames, d / "good.mp4", "libx264", EncodeSpec(gop=8))
    data = good.read_bytes()
    out["truncated"] = d / "truncated.mp4"
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["garbage"] = d / "garbage.mp4"
    out["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    # moov atom first: the header promises 24 frames, the data stops half way
    fast = encode(frames, d / "faststart.mp4", "libx264", options={}, container_options={"movflags": "faststart"})
    with av.open(str(fast)) as c:
        packets = sorted((p.pos, p.size) for p in c.demux(video=0) if p.size)
    pos, size = packets[12]  # cut inside the 13th frame's data
    out["cut_data"] = d / "cut_data.mp4"
    out["cut_data"].write_bytes(fast.read_bytes()[: pos + size // 2])
    return out


@pytest.fixture(scope="session")
def realish_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two objects over a background with fresh sensor-like noise every frame, encoded the way real footage is
    (x264 preset medium: 4 reference frames, every partition size down to 4x4, scene-cut I-frames, GOP 16, no
    B-frames): P-frames full of coded residuals and vectors that point at more than the previous frame."""
    frames, _ = render_clip("two", seed=5, size=(240, 320), num_frames=48)
    noise = np.random.default_rng(5).normal(0, 6, frames.shape)
    frames = np.clip(frames + noise, 0, 255).astype(np.uint8)
    options = {
        "crf": "20",
        "preset": "medium",
        "x264-params": "keyint=16:min-keyint=4:bframes=0:ref=4:partitions=all:scenecut=40",
    }
    return encode(frames, tmp_path_factory.mktemp("realish") / "realish.mp4", "libx264", options=options)


def raw_vectors(path: Path, options: dict, threads: int = 1) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"flags2": "+export_mvs", **options}
        s.thread_type, s.thread_count = "SLICE", threads
        out = []
        for f in c.decode(s):
            sd = f.side_data.get("MOTION_VECTORS")
            out.append(sd.to_ndarray() if sd is not None else np.zeros(0))
        return out


def object_cells(box: list[int], cell: int, shape: tuple[int, int], margin: int = 0) -> np.ndarray:
    """Cells touched by the box grown by `margin` pixels (codec blocks are aligned to 16 px macroblocks)."""
    x, y, w, h = box
    x, y, w, h = max(x - margin, 0), max(y - margin, 0), w + 2 * margin, h + 2 * margin
    m = np.zeros(shape, bool)
    m[y // cell : -(-(y + h) // cell), x // cell : -(-(x + w) // cell)] = True
    return m


def test_blocks_are_centred_on_dst_and_energy_sits_on_the_object(synth_clips: dict[str, Path]) -> None:
    mp4 = synth_clips["single"]
    gt = truth(mp4)
    field = read_motion(str(mp4), cell=4)
    assert field.has_vectors and field.energy.shape == (60, 60, 80) and field.frame_size == (240, 320)
    speed = float(np.abs(np.diff(np.asarray(gt["boxes"])[:, 0, :2], axis=0)).sum(axis=1).max())
    errors = []
    for f in range(1, 60):
        e = field.energy[f]
        x, y, w, h = gt["boxes"][f][0]
        ys, xs = np.indices(e.shape) * 4 + 2.0
        cy, cx = (e * ys).sum() / e.sum(), (e * xs).sum() / e.sum()
        errors.append(np.hypot(cx - (x + w / 2), cy - (y + h / 2)))
        inside = object_cells(gt["boxes"][f][0], 4, e.shape, margin=8)
        assert e[inside].sum() > 0.95 * e.sum(), f"frame {f}: energy off the object"
        # a corner-anchored reading of dst would shift everything by half a block (8 px)
    assert np.median(errors) < 3.0, errors
    # magnitude = pixels per frame: inside the object it is the object's speed
    core = field.energy[5][object_cells(gt["boxes"][5][0], 4, field.energy.shape[1:])]
    assert np.median(core) == pytest.approx(speed, rel=0.2)


def test_fast_decoder_options_give_identical_vectors(synth_clips: dict[str, Path], bframe_clip: Path) -> None:
    for clip in (synth_clips["single"], bframe_clip):
        ref = raw_vectors(clip, {})
        for opts, threads in ((FAST_OPTIONS, 1), (FAST_OPTIONS, 2)):
            got = raw_vectors(clip, opts, threads)
            assert len(got) == len(ref)
            for a, b in zip(ref, got, strict=True):
                assert np.array_equal(a, b)
    # and the reader itself: exact (pixel) decode path == fast path; threads (frame threads on the B-free clip,
    # slice threads on the B-frame one) == one thread, for whole files and mid-GOP spans
    for clip in (synth_clips["single"], bframe_clip):
        fast = read_motion(str(clip))
        exact, _ = read_span(str(clip), 0, None, keep=[0])
        np.testing.assert_array_equal(fast.energy, exact.energy)
        np.testing.assert_array_equal(read_motion(str(clip), threads=2).energy, fast.energy)
        np.testing.assert_array_equal(read_motion(str(clip), threads=2, start=21, stop=45).energy, fast.energy[21:45])


def test_frame_numbering_and_rgb_match_pyav_decode_order(synth_clips: dict[str, Path], bframe_clip: Path) -> None:
    for clip in (synth_clips["two"], bframe_clip):
        with av.open(str(clip)) as c:
            ref = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        keep = [17, 19, 21, 33, 50]
        field, rgb = read_span(str(clip), 17, 52, keep=keep)
        assert field.first_frame == 17 and field.energy.shape[0] == 35 and field.num_frames == 60
        assert sorted(rgb) == keep
        for i in keep:
            np.testing.assert_array_equal(rgb[i], ref[i])


@pytest.mark.parametrize("span", [(0, 32), (5, 37), (16, 48), (20, 52), (28, 60), (47, 49), (59, 60)])
def test_span_read_equals_full_read(synth_clips: dict[str, Path], bframe_clip: Path, span: tuple[int, int]) -> None:
    a, b = span
    for clip in (synth_clips["single"], bframe_clip):
        full = read_motion(str(clip))
        part = read_motion(str(clip), start=a, stop=b)
        np.testing.assert_array_equal(part.energy, full.energy[a:b])


def test_bframes_give_the_same_motion_as_p_frames(bframe_clip: Path) -> None:
    with av.open(str(bframe_clip)) as c:
        types = {int(f.pict_type) for f in c.decode(video=0)}
    assert 3 in types, "the fixture should contain B-frames"
    b = read_motion(str(bframe_clip))
    p = read_motion(str(bframe_clip.with_name("p.mp4")))
    gt = truth(bframe_clip)
    per_frame_b = [b.energy[f][object_cells(gt["boxes"][f][0], 8, b.energy.shape[1:])].mean() for f in range(1, 60)]
    per_frame_p = [p.energy[f][object_cells(gt["boxes"][f][0], 8, p.energy.shape[1:])].mean() for f in range(1, 60)]
    # distance-normalized vectors: the B-frame stream's per-frame motion matches the P-only stream's
    assert np.median(per_frame_b) == pytest.approx(np.median(per_frame_p), rel=0.25)
    assert np.min(per_frame_b) > 0.3 * np.median(per_frame_p)


def test_key_frames_are_filled_from_neighbours(synth_clips: dict[str, Path]) -> None:
    field = read_motion(str(synth_clips["single"]))
    for k in (0, 16, 32, 48):  # GOP 16: these carry no vectors
        assert field.energy[k].sum() > 0
        np.testing.assert_array_equal(field.energy[k], field.energy[k + 1])


def test_camera_pan_is_subtracted(synth_clips: dict[str, Path]) -> None:
    mp4 = synth_clips["pan"]
    gt = truth(mp4)
    pan_speed = float(np.hypot(*gt["pan"]))
    raw = read_motion(str(mp4), camera=False)
    comp = read_motion(str(mp4))
    f = 10
    background = ~object_cells(gt["boxes"][f][0], 8, raw.energy.shape[1:])
    assert np.median(raw.energy[f][background]) == pytest.approx(pan_speed, rel=0.15)
    assert np.median(comp.energy[f][background]) < 0.1
    assert comp.energy[f][~background].mean() > 10 * comp.energy[f][background].mean()


def test_clip_map_counts_skipped_frames_and_follows_crop_and_flip() -> None:
    # 20 frames of 64x64 pixels, cell 8; frame i has energy only at odd frames, in cell (row 2, col 1)
    energy = np.zeros((20, 8, 8), np.float32)
    energy[1::2, 2, 1] = 1.0
    field = MotionField(energy, 8, (64, 64), True, 20)
    idx = np.arange(0, 16, 2)  # stride 2: the sampled frames are all even, the motion is all on odd ones
    m = field.clip_map(idx, (0, 0, 64, 64), False, (4, 4, 4))
    assert m.shape == (4, 4, 4) and m.dtype == np.float32
    # each slot spans 4 source frames (2 odd ones); the cell (16..24, 8..16) is a quarter of token (1, 0)
    np.testing.assert_allclose(m[:, 1, 0], 2 * 0.25)
    assert m.sum() == pytest.approx(4 * 2 * 0.25)
    flipped = field.clip_map(idx, (0, 0, 64, 64), True, (4, 4, 4))
    np.testing.assert_array_equal(flipped, m[:, :, ::-1])
    # crop (x=8, y=16, 32x32) puts that cell in the top-left token, covering a quarter of it
    c = field.clip_map(idx, (8, 16, 32, 32), False, (4, 2, 2))
    np.testing.assert_allclose(c[:, 0, 0], 2 * 0.25)
    assert c[:, 1:, :].sum() == 0 and c[:, :, 1:].sum() == 0
    # a backwards pair (looped short clip) counts just its two frames
    loop = field.clip_map([19, 1, 3, 5], None, False, (2, 1, 1))
    assert loop[0, 0, 0] == pytest.approx(2 / 64) and loop[1, 0, 0] == pytest.approx(2 / 64)
    assert span_of(idx, 20) == (0, 16)
    with pytest.raises(ValueError):
        field.clip_map(idx[:5], None, False, (4, 4, 4))


def test_clip_map_of_real_clip_puts_energy_on_the_object(synth_clips: dict[str, Path]) -> None:
    mp4 = synth_clips["single"]
    gt = truth(mp4)
    field = read_motion(str(mp4))
    idx = np.arange(10, 42, 2)
    crop = (40, 0, 240, 240)
    m = field.clip_map(idx, crop, True, (8, 14, 14))
    for t in range(8):
        x, y, w, h = gt["boxes"][idx[2 * t]][0]
        ti, tj = np.unravel_index(np.argmax(m[t]), (14, 14))
        cy = (ti + 0.5) * 240 / 14
        cx = 240 - (tj + 0.5) * 240 / 14 + 40  # flipped back to source x
        assert abs(cy - (y + h / 2)) < h and abs(cx - (x + w / 2)) < w + 8


@pytest.mark.parametrize("name", ["mjpeg", "cinepak", "intra"])
def test_codecs_without_vectors(odd_clips: dict[str, Path], name: str) -> None:
    field = read_motion(str(odd_clips[name]))
    assert not field.has_vectors
    assert field.num_frames == 24 and field.energy.shape[0] == 24 and not field.energy.any()


def test_vp9_has_no_vectors(synth_clips: dict[str, Path]) -> None:
    field = read_motion(str(synth_clips["single"].with_suffix(".webm")))
    assert not field.has_vectors and field.energy.shape[0] == 60 and not field.energy.any()


@pytest.mark.parametrize("name", ["truncated", "garbage", "cut_data", "missing"])
def test_bad_files_raise_one_error_naming_file_and_frames(odd_clips: dict[str, Path], name: str) -> None:
    path = odd_clips.get(name, odd_clips["garbage"].with_name("nope.mp4"))
    with pytest.raises(MotionReadError) as info:
        read_motion(str(path))
    msg = str(info.value)
    assert str(path) in msg and "frames" in msg
    assert info.value.path == str(path) and info.value.frames_read >= 0
    if name == "cut_data":
        assert 10 <= info.value.frames_read <= 13


@pytest.mark.parametrize("cell", [4, 6, 8, 12, 16])
def test_rasterize_matches_a_per_pixel_reference(cell: int) -> None:
    from mgm.motion_field import _rasterize
    from mgm.vectors import MV_DTYPE

    rng = np.random.default_rng(cell)
    h, w, n = 60, 84, 80  # not multiples of the cell: partial border cells
    mv = np.zeros(n, MV_DTYPE)
    mv["w"] = rng.choice([4, 8, 16], n)
    mv["h"] = rng.choice([4, 8, 16], n)
    mv["dst_x"] = rng.integers(-2, 24, n) * 4 + mv["w"] // 2  # some blocks stick out of the frame
    mv["dst_y"] = rng.integers(-2, 17, n) * 4 + mv["h"] // 2
    mag = rng.random(n).astype(np.float32)
    frames = rng.integers(0, 3, n)
    got = _rasterize(frames, mv["dst_x"], mv["dst_y"], mv["w"], mv["h"], mag, 3, cell, (h, w))
    pixels = np.zeros((3, h, w))
    for f, v, m in zip(frames, mv, mag, strict=True):
        x0, y0 = v["dst_x"] - v["w"] // 2, v["dst_y"] - v["h"] // 2
        pixels[f, max(y0, 0) : max(y0 + v["h"], 0), max(x0, 0) : max(x0 + v["w"], 0)] += m
    rows, cols = -(-h // cell), -(-w // cell)
    ref = np.zeros((3, rows, cols))
    for r in range(rows):
        for c in range(cols):
            ref[:, r, c] = pixels[:, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].mean(axis=(1, 2))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_span_past_the_end_is_a_motion_read_error(synth_clips: dict[str, Path], odd_clips: dict[str, Path]) -> None:
    for path in (synth_clips["single"], odd_clips["cut_data"]):  # 60 frames; a file cut after ~12 frames
        with pytest.raises(MotionReadError, match=path.name):
            read_motion(str(path), start=70, stop=86)
    with pytest.raises(MotionReadError, match="cut_data"):
        read_motion(str(odd_clips["cut_data"]), start=20, stop=24)
    field = read_motion(str(synth_clips["single"]), start=50, stop=90)  # a span running past the end is clipped
    assert field.energy.shape[0] == 10


def _vectors_by_pts(path: Path, skip_keys: bool) -> dict[int, np.ndarray]:
    from mgm.video import decode_packets

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"flags2": "+export_mvs+showall", **FAST_OPTIONS}
        packets = [p for p in c.demux(s) if p.size]
        out = {}
        for frame, _ in decode_packets(s.codec_context, packets, skip_keys):
            if frame is not None:
                sd = frame.side_data.get("MOTION_VECTORS")
                out[frame.pts] = sd.to_ndarray() if sd is not None else np.zeros(0)
        return out


def test_undecoded_key_frames_leave_every_vector_unchanged(synth_clips: dict[str, Path], realish_clip: Path) -> None:
    with av.open(str(realish_clip)) as c:
        kinds = [int(f.pict_type) for f in c.decode(video=0)]
    assert kinds.count(2) > 30 and kinds.count(1) >= 3  # P-frames with several references, and key frames
    for clip in (synth_clips["two"], realish_clip):
        ref = _vectors_by_pts(clip, skip_keys=False)
        got = _vectors_by_pts(clip, skip_keys=True)
        with av.open(str(clip)) as c:
            keys = {int(p.pts) for p in c.demux(video=0) if p.size and p.is_keyframe}
        assert set(got) == set(ref) - keys and keys
        moving = 0
        for pts, v in got.items():
            assert np.array_equal(v, ref[pts]), f"{clip.name}: frame pts {pts}"
            moving += int(((v["motion_x"] != 0) | (v["motion_y"] != 0)).sum()) if v.size else 0
        assert moving > 1000
    # and through the reader: the vectors-only path (key frames skipped) == the exact pixel path, whole and spans
    fast = read_motion(str(realish_clip))
    exact, _ = read_span(str(realish_clip), 0, None, keep=[0])
    assert fast.energy.max() > 0.5
    np.testing.assert_array_equal(fast.energy, exact.energy)
    for a, b in ((3, 35), (16, 48), (15, 17)):
        np.testing.assert_array_equal(read_motion(str(realish_clip), start=a, stop=b).energy, fast.energy[a:b])


def test_other_containers_and_audio_only(synth_clips: dict[str, Path], tmp_path: Path) -> None:
    # opening probes headers only (no frame decoded): containers whose streams show up only in the packets still
    # give the same field, and a file without a video stream is a MotionReadError naming it
    src = synth_clips["single"]
    ref = read_motion(str(src))
    for fmt, ext in (("mpegts", "ts"), ("h264", "h264"), ("matroska", "mkv")):
        out = tmp_path / f"remux.{ext}"
        with av.open(str(src)) as i, av.open(str(out), "w", format=fmt) as o:
            s_in = i.streams.video[0]
            s_out = o.add_stream_from_template(s_in)
            for p in i.demux(s_in):
                if p.dts is not None:
                    p.stream = s_out
                    o.mux(p)
        got = read_motion(str(out))
        assert got.num_frames == 60 and got.frame_size == (240, 320)
        np.testing.assert_array_equal(got.energy, ref.energy)
    audio = write_tone(tmp_path / "tone.m4a")
    with pytest.raises(MotionReadError, match="tone.m4a.*no video stream"):
        read_motion(str(audio))


def test_span_frames_through_on_frame_equal_the_returned_ones(synth_clips: dict[str, Path]) -> None:
    path, keep = str(synth_clips["single"]), [20, 22, 30, 35]
    field, frames = read_span(path, 18, 40, keep=keep)
    got: dict[int, np.ndarray] = {}
    field2, rest = read_span(path, 18, 40, keep=keep, on_frame=got.__setitem__)
    assert rest == {} and sorted(got) == keep == sorted(frames)
    assert all(np.array_equal(got[i], frames[i]) for i in keep)
    with av.open(path) as c:  # the reused swscale context converts exactly like PyAV's to_ndarray
        plain = {i: f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i in keep}
    assert all(np.array_equal(plain[i], frames[i]) for i in keep)
    assert np.array_equal(field.energy, field2.energy)
