from pathlib import Path

import pytest

import train

DEMO = str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")


def test_both_override_spellings_and_resume_flag() -> None:
    _, overrides = train.parse_args(["--cfg", DEMO, "data.batch_size=4", "--mask.name", "tube", "--resume", "auto"])
    assert overrides == ["data.batch_size=4", "mask.name=tube", "train.resume=auto"]


def test_config_error_names_key_and_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert train.main(["--cfg", DEMO, "data.batch_sise=4"]) == 2
    err = capsys.readouterr().err
    assert "data.batch_sise" in err and "batch_size" in err


def test_missing_data_says_how_to_prepare(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.csv"
    assert train.main(["--cfg", DEMO, f"data.train_list={missing}"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "mgm-prepare synth" in err


def test_tiny_run_writes_config_checkpoint_and_logs(synth_list: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = train.main(["--cfg", DEMO, f"data.train_list={synth_list}", f"train.out_dir={out}", "data.input_size=32",
                     "data.batch_size=2", "data.num_workers=1", "data.loader=cpu", "train.max_steps=2",
                     "model.size=tiny", "train.ckpt_every=1"])  # fmt: skip
    assert rc == 0
    from mgm.config import load_config

    assert load_config(out / "config.yaml").data.input_size == 32
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt"))[-1].endswith("00000002.pt")
    assert (out / "log.jsonl").read_text().strip()


def test_resume_from_a_file_that_is_not_a_checkpoint_names_it_and_exits_2(
    synth_list: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    rc = train.main(["--cfg", DEMO, f"data.train_list={synth_list}", f"train.out_dir={tmp_path / 'run'}",
                     "data.input_size=32", "data.batch_size=2", "data.num_workers=0", "data.loader=cpu",
                     "train.max_steps=1", "model.size=tiny", "--resume", str(junk)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "cannot resume" in err and str(junk) in err and "not a readable checkpoint" in err
