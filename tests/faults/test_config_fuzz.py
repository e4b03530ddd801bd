"""Property-based tests of the config loader: whatever the YAML file or the overrides hold, `load_config`
returns a Config or raises ConfigError with a message naming the key (or the file), never another exception."""

from __future__ import annotations

import dataclasses
import math
import string
import tempfile
from pathlib import Path

import pytest
import yaml

pytest.importorskip("hypothesis")  # a dev extra, absent on the GPU machine: skip, don't break collection
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mgm.config import Config, ConfigError, load_config  # noqa: E402

SECTIONS = {f.name: [g.name for g in dataclasses.fields(f.default_factory())] for f in dataclasses.fields(Config)}
KEYS = [f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, 1, -1, 2, 3, 16, 224]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 0.9, 1.0, -0.5, 1e300]),
    st.text(max_size=12),
    st.sampled_from(["auto", "cpu", "dali", "mgm", "tube", "tiny", "loop", "bf16", "float32", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
key_names = st.one_of(st.sampled_from(KEYS), st.text(alphabet=string.ascii_lowercase + "._", min_size=0, max_size=16))

sections = st.one_of(st.sampled_from(list(SECTIONS)), st.text(max_size=8))
bodies = st.one_of(st.dictionaries(key_names.map(lambda k: k.split(".")[-1]), values, max_size=4), values)
trees = st.dictionaries(sections, bodies, max_size=4)


def _check_error(e: ConfigError, *names: str) -> None:
    msg = str(e)
    assert msg and "Traceback" not in msg
    assert any(n and n in msg for n in names), (msg, names)


def _load_text(text: str | bytes) -> tuple[Path, Config | ConfigError]:
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml", delete=False) as f:
        f.write(text.encode() if isinstance(text, str) else text)
    path = Path(f.name)
    try:
        return path, load_config(path)
    except ConfigError as e:
        return path, e
    finally:
        path.unlink()


@FAST
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
@example("data: {num_frames: [")
@example(b"\xff\xfe\x00garbage")
@example("data:\n  - 1\n  - 2\n")
@example("? [a, b]\n: 1\n")
@example("[" * 2000)
def test_any_file_content_loads_or_names_the_file(text: str | bytes) -> None:
    path, out = _load_text(text)
    if isinstance(out, ConfigError):
        _check_error(out, str(path))


@FAST
@given(trees)
@example({"data": {"num_frames": 0}})
@example({"model": {"patch": 0}})
@example({"model": {"tubelet": 0}})
@example({"mask": {"ratio": float("nan")}})
@example({"mask": {"ratio": float("inf")}})
@example({"data": {"input_size": -32}})
def test_any_tree_loads_or_names_the_key(tree: dict) -> None:
    path, out = _load_text(yaml.safe_dump(tree))
    if isinstance(out, ConfigError):
        names = [str(path)] + [f"{s}.{k}" for s, body in tree.items() if isinstance(body, dict) for k in body]
        names += [str(s) for s in tree]
        _check_error(out, *names)


@FAST
@given(st.lists(st.tuples(key_names, st.one_of(values.map(lambda v: yaml.safe_dump(v).strip()), st.text(max_size=20))),
                max_size=3))  # fmt: skip
@example([("model.patch", "0")])
@example([("data.num_frames", "-16")])
@example([("mask.ratio", ".nan")])
@example([("optim.base_lr", ".inf")])
@example([("data.batch_size", "0")])
@example([("data.max_bad_fraction", "-1")])
@example([("data.crop_scales", "[]")])
def test_any_override_loads_or_names_the_key(pairs: list[tuple[str, str]]) -> None:
    texts = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(None, texts)
    except ConfigError as e:
        _check_error(e, *[k.strip() for k, _ in pairs if k.strip()], *texts)
    else:
        _check_loaded(cfg)


def _check_loaded(cfg: Config) -> None:
    """A config that loads is one the run can use: positive sizes, finite numbers, a usable grid."""
    d, m = cfg.data, cfg.model
    assert min(d.num_frames, d.stride, d.input_size, d.batch_size, m.tubelet, m.patch) > 0
    assert all(math.isfinite(v) for v in (cfg.optim.base_lr, cfg.optim.min_lr, cfg.mask.ratio))
    assert 0 <= d.max_bad_fraction <= 1 and d.crop_scales and all(0 < s <= 1 for s in d.crop_scales)
    g = cfg.derived
    assert g.num_masked > 0 and g.num_visible > 0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.patch=0", "model.patch"),
        ("model.tubelet=0", "model.tubelet"),
        ("data.num_frames=-16", "data.num_frames"),
        ("data.input_size=0", "data.input_size"),
        ("data.batch_size=0", "data.batch_size"),
        ("mask.ratio=.nan", "mask.ratio"),
        ("optim.base_lr=.inf", "optim.base_lr"),
        ("data.max_bad_fraction=2", "data.max_bad_fraction"),
        ("data.crop_scales=[]", "data.crop_scales"),
        ("train.ckpt_every=0", "train.ckpt_every"),
        ("optim.accum_steps=0", "optim.accum_steps"),
    ],
)
def test_out_of_range_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unreadable_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match="dir.yaml"):
        load_config(tmp_path / "dir.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\x80\x81\xfe data: 1")
    with pytest.raises(ConfigError, match="bin.yaml"):
        load_config(binary)
