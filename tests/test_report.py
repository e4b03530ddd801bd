"""report_format (the shared bench output) and report.py (PNG plots from those JSON files)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from profiling import hooks
from profiling.hooks import ProfileHook
from profiling.profile_train import flat_row
from profiling.report_format import emit, fmt_value, format_table, machine_info, median_time, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def report() -> ModuleType:
    """profiling.report, which plots with matplotlib (a dev extra): its tests skip where it is missing, e.g. on the
    GPU machine, and the rest of this module still collects there."""
    pytest.importorskip("matplotlib")
    from profiling import report as module

    return module


def test_emit_prints_union_of_columns_and_writes_json(tmp_path: Path, capsys) -> None:
    rows = [{"loader": "dali", "clips_per_s": 39.234}, {"loader": "cpu", "clips_per_s": 14.1, "note": "fallback"}]
    emit("bench_decode", rows, out=tmp_path / "sub" / "b.json", meta={"clips": 64})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("== bench_decode (")
    assert out[1].split() == ["loader", "clips_per_s", "note"]
    assert out[3].split() == ["dali", "39.2", "-"]
    doc = json.loads((tmp_path / "sub" / "b.json").read_text())
    assert doc["bench"] == "bench_decode" and doc["meta"] == {"clips": 64} and doc["rows"] == rows
    assert {"cpu", "cores", "gpu", "torch", "python"} <= set(doc["machine"])


def test_emit_without_out_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    emit("x", [{"a": 1}])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "value,text",
    [(39.234, "39.2"), (1234.5, "1234"), (0.012345, "0.0123"), (2e-5, "2.00e-05"), (7, "7"), (True, "True")],
)
def test_fmt_value(value: object, text: str) -> None:
    assert fmt_value(value) == text


def test_table_aligns_numbers_right() -> None:
    lines = format_table([{"name": "a", "v": 1.5}, {"name": "bbbb", "v": 100.25}]).splitlines()
    assert lines[2].endswith(" 1.5") and lines[3].endswith("100")
    assert len({len(line) for line in lines}) == 1


def test_machine_info_and_median_time() -> None:
    mi = machine_info()
    assert mi["cores"] >= 1 and isinstance(mi["cpu"], str)
    calls = []
    assert median_time(lambda: calls.append(1), repeats=3, warmup=2) >= 0.0
    assert len(calls) == 5
    with pytest.raises(ValueError):
        median_time(lambda: None, repeats=0)


def sample_profile(tmp_path: Path, name: str, wait: float) -> Path:
    """A profile_train-format JSON from a hook fed made-up timings (no sleeping: the hook's clock is faked)."""
    clock = {"t": 0.0}
    hook = ProfileHook(interval=2, nvml=False, warmup=1, verbose=False, name=name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hooks, "_now", lambda: clock["t"])
        for _ in range(8):
            with hook.wait():
                clock["t"] += wait
            with hook.step(clips=8, frames=128, tokens=8 * 392, mask_seconds=0.05):
                clock["t"] += 0.2
    summary = hook.close()
    rows = [flat_row(r) for r in hook.records]
    for r in rows:  # as if NVML had been there
        r["gpu_util"], r["dec_util"] = 80.0, 35.0
    path = tmp_path / name / "profile_train.json"
    write_json("profile_train", rows, path, {"summary": summary})
    return path


def test_report_makes_pngs(tmp_path: Path) -> None:
    runs = [sample_profile(tmp_path, "dali", 0.02), sample_profile(tmp_path, "cpu_loader", 0.3)]
    bench = tmp_path / "bench_decode.json"
    emit("bench_decode", [{"loader": "dali", "clips_per_s": 39.0}, {"loader": "pyav", "clips_per_s": 14.0}], bench)
    (tmp_path / "junk.json").write_text("{not json")
    written = report().make_report([runs[0], runs[1].parent, bench, tmp_path / "junk.json"], tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert names == ["bench_decode.png", "breakdown.png", "throughput.png"]
    for p in written:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_sample_profile_verdicts(tmp_path: Path) -> None:
    fast = json.loads(sample_profile(tmp_path, "a", 0.0).read_text())["meta"]["summary"]
    slow = json.loads(sample_profile(tmp_path, "b", 0.3).read_text())["meta"]["summary"]
    assert fast["input_bound"] is False and slow["input_bound"] is True
    assert slow["data_wait_share"] == pytest.approx(0.3 / 0.5)
    assert slow["clips_per_s"] == pytest.approx(8 / 0.5)


def test_report_cli_fails_on_nothing(tmp_path: Path) -> None:
    assert report().main([str(tmp_path), "--out", str(tmp_path / "plots")]) == 1


def test_profile_train_smoke(tmp_path: Path, synth_list: Path, capsys) -> None:
    """profile_train runs a few steps of the demo config through the real engine and loader."""
    from profiling import profile_train

    over = [f"data.train_list={synth_list}", "data.loader=cpu", "data.batch_size=2", "data.num_workers=1",
            "data.input_size=64", "mask.name=tube"]  # fmt: skip
    s = profile_train.main(
        ["--cfg", "configs/demo.yaml", "--steps", "3", "--warmup", "1", "--out", str(tmp_path)] + over
    )
    assert s["steps"] == 2 and s["clips_per_s"] > 0
    assert 0.0 <= s["data_wait_share"] <= 1.0 and s["verdict"]
    out = capsys.readouterr().out
    assert "verdict:" in out and "data wait" in out
    doc = json.loads((tmp_path / "profile_train.json").read_text())
    assert doc["bench"] == "profile_train" and len(doc["rows"]) == 3 and doc["meta"]["summary"]["steps"] == 2
    assert not (tmp_path / "checkpoints").exists()
    assert report().make_report([tmp_path], tmp_path / "plots")
