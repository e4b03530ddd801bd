from pathlib import Path

import pytest

from mgm.config import ConfigError, load_config, save_config

CONFIGS = sorted(Path(__file__).resolve().parent.parent.joinpath("configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load_and_round_trip(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    saved = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(saved).to_dict() == cfg.to_dict()


def test_round_trip_keeps_overrides(tmp_path: Path) -> None:
    cfg = load_config(None, ["mask.ratio=0.75", "optim.betas=[0.8, 0.9]", "data.flip=true", "mask.knobs={smooth: 2}"])
    again = load_config(save_config(cfg, tmp_path / "r.yaml"))
    assert again.mask.ratio == 0.75 and again.optim.betas == [0.8, 0.9] and again.data.flip is True
    assert again.mask.knobs == {"smooth": 2}
    assert again.to_dict() == cfg.to_dict()


def test_vitb_recipe_derived_numbers() -> None:
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "ssv2_vitb.yaml", ["mask.ratio=0.9"])
    d = cfg.derived
    assert d.grid == (8, 14, 14)
    assert d.num_tokens == 1568
    assert d.masked_per_slot == 176
    assert d.num_masked == 1408
    assert d.num_visible == 160


def test_int_is_accepted_for_float_and_types_are_checked() -> None:
    assert load_config(None, ["optim.base_lr=1"]).optim.base_lr == 1.0
    with pytest.raises(ConfigError, match=r"data.batch_size: expected int, got 'many'.*command line"):
        load_config(None, ["data.batch_size=many"])
    with pytest.raises(ConfigError, match=r"data.flip: expected bool"):
        load_config(None, ["data.flip=1"])


def test_unknown_key_names_key_file_and_suggestion(tmp_path: Path) -> None:
    p = write(tmp_path, "data:\n  batch_sise: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "data.batch_sise" in msg and str(p) in msg and "batch_size" in msg


def test_unknown_section_suggests_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section 'optimizer'.*Did you mean: optim"):
        load_config(write(tmp_path, "optimizer:\n  base_lr: 0.1\n"))


def test_wrong_type_in_file_names_file(tmp_path: Path) -> None:
    p = write(tmp_path, "optim:\n  betas: 0.9\n")
    with pytest.raises(ConfigError, match=r"optim.betas: expected list\[float\].*" + str(p).replace(".", r"\.")):
        load_config(p)


def test_choice_and_range_errors() -> None:
    with pytest.raises(ConfigError, match=r"mask.name: 'blob'.*tube, random, mgm"):
        load_config(None, ["mask.name=blob"])
    with pytest.raises(ConfigError, match=r"mask.ratio"):
        load_config(None, ["mask.ratio=1.5"])
    with pytest.raises(ConfigError, match=r"model.patch"):
        load_config(None, ["model.patch=15"])


def test_malformed_yaml_and_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_config(write(tmp_path, "data: [1, 2\n"))
    with pytest.raises(ConfigError, match=r"section must be a mapping"):
        load_config(write(tmp_path, "data: 3\n"))
    with pytest.raises(ConfigError, match=r"expected section.key=value"):
        load_config(None, ["data.batch_size"])
    with pytest.raises(ConfigError, match=r"section.key"):
        load_config(None, ["batch_size=3"])
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(tmp_path / "nope.yaml")
