"""Checkpoint files: safe reading, atomic writing, rotation, RNG state, and weights checked against the model.

Safe reading: a pickled `.pth` can run code when it is unpickled, and released weights come from the internet.
Every checkpoint this project reads (its own, VideoMAE / VideoMAE V2 `.pth`, Hugging Face folders) goes through
`load`: `torch.load(weights_only=True)`, which builds only tensors and plain containers (plus numpy arrays and
scalars and argparse.Namespace, `_SAFE_GLOBALS`) and refuses anything else, or safetensors. So our own
checkpoints hold only tensors and plain Python: `save_atomic` checks that before writing (`plain`), and the numpy
RNG state is stored as a tensor (`rng_state`).

Checked loading: `load_state` puts a state dict into a module only when every tensor has the module's shape; a
mismatch names the tensor, both shapes, and the config key that would make them agree (`model.size=large`,
`model.tubelet=2`, `model.num_classes=174`), inferred from the checkpoint's own tensors.
"""

from __future__ import annotations

import argparse
import pickle
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mgm.atomic import atomic_write

PATTERN = "step_*.pt"

# Classes that rebuild plain data and run nothing else, allowed on top of weights_only's tensors and containers:
# numpy arrays and scalars of numeric dtypes (the RNG state of our checkpoints written before it became a tensor;
# `best_acc`-style values in others) and argparse.Namespace (VideoMAE's training checkpoints keep their `args`).
_NP_CORE = (getattr(np, "_core", None) or np.core).multiarray
_SAFE_GLOBALS = [
    *[(f, f"numpy.{core}.multiarray.{f.__name__}") for f in (_NP_CORE._reconstruct, _NP_CORE.scalar)
      for core in ("_core", "core")],  # numpy 2 and numpy 1 write these names
    np.ndarray,
    np.dtype,
    *[getattr(np.dtypes, f"{t}DType") for t in ("Bool", "Int32", "Int64", "UInt32", "UInt64", "Float32", "Float64")],
    argparse.Namespace,
]  # fmt: skip


# What torch.load(weights_only=True) rebuilds, besides containers (dict, list, tuple, set) and None.
_PLAIN = (bool, int, float, complex, str, bytes, torch.Tensor, torch.Size, torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and why."""


class CheckpointMismatch(CheckpointError):
    """Weights that do not fit the model the config describes; the message names tensors, shapes, config keys."""


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) generator states, as plain Python and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),  # (version, tuple of ints, gauss or None): plain Python
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (or the numpy tuple of checkpoints written before it was a dict)."""
    random.setstate(state["python"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        npy = (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """`obj` with numpy scalars as Python numbers and numpy arrays as tensors (containers rebuilt only where
    something changed, so a state dict keeps its metadata); anything else that `torch.load(weights_only=True)`
    would refuse raises TypeError naming its place (e.g. checkpoint['loader'])."""
    if isinstance(obj, dict):
        new = {k: plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return obj if all(new[k] is v for k, v in obj.items()) else type(obj)(new)
    if isinstance(obj, list | tuple | set) and not hasattr(obj, "_fields"):  # a namedtuple pickles as its class
        new = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return obj if all(a is b for a, b in zip(new, obj, strict=True)) else type(obj)(new)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if obj is None or isinstance(obj, _PLAIN):
        return obj
    raise TypeError(f"{where}: {type(obj).__name__} cannot be saved in a checkpoint (tensors and plain Python only)")


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write `obj` (tensors and plain Python, see `plain`) with torch.save to a temporary file, fsync it, then
    rename over `path`.

    A crash leaves either the previous file or the complete new one, never a torn checkpoint; a failed write
    (e.g. a full disk) removes its partial temporary file and re-raises.
    """
    obj = plain(obj)  # before opening the file: an unsaveable value fails without touching the disk
    with atomic_write(path, "wb", sync_dir=True) as f:
        torch.save(obj, f)
    return Path(path)


def checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:08d}.pt"


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `ckpt_dir`, oldest first (temporary files are ignored)."""
    d = Path(ckpt_dir)
    return sorted(d.glob(PATTERN)) if d.is_dir() else []


def prune(ckpt_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (keep_last <= 0 keeps everything); returns the deleted."""
    files = list_checkpoints(ckpt_dir)
    gone = files[:-keep_last] if keep_last > 0 else []
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def resolve_resume(resume: str | Path, ckpt_dir: str | Path) -> Path | None:
    """ "" -> None; "auto" -> newest checkpoint in `ckpt_dir` (None if there is none); a directory -> its newest;
    a file -> itself. A path that does not exist is an error naming it."""
    if not str(resume):
        return None
    if str(resume) == "auto":
        files = list_checkpoints(ckpt_dir)
        return files[-1] if files else None
    p = Path(resume)
    if p.is_dir():
        files = list_checkpoints(p)
        if not files:
            raise FileNotFoundError(f"train.resume={resume}: no {PATTERN} checkpoint in that folder")
        return files[-1]
    if not p.is_file():
        raise FileNotFoundError(f"train.resume={resume}: no such checkpoint file")
    return p


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU without running code from it: `.safetensors` with safetensors, anything
    else with `torch.load(weights_only=True)`. A file whose pickle asks for anything but tensors and plain
    containers raises `CheckpointError` naming the file and what it asked for; nothing from it is executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError for a bad header
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        asked = re.search(r"GLOBAL (\S+)", str(e))
        if asked is None:  # not refused for what it asks, just not a pickle of ours (a torn or foreign file)
            why = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
            raise CheckpointError(f"{path}: not a readable checkpoint ({why.group(1) if why else e})") from None
        raise CheckpointError(
            f"{path}: refused, not a plain-weights checkpoint (it asks for {asked.group(1)}); only tensors and "
            "plain Python are loaded, since unpickling anything else can run code. Re-save it from a trusted "
            "environment as a state dict, or as .safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:  # a torn or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0]})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


@dataclass
class LoadReport:
    """What `load_state` did: tensors loaded, model tensors left at their init, checkpoint tensors not used, and
    notes from the conversion (what was dropped and why)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def names(keys: list[str]) -> str:
            heads = sorted({k.split(".")[0] for k in keys})
            return ", ".join(heads) if keys else "none"

        return (f"{self.source}: loaded {len(self.loaded)} tensors; new (initialized): {names(self.fresh)}; "
                f"not used: {names(self.dropped)}" + "".join(f"; {n}" for n in self.notes))  # fmt: skip


def architecture(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The config numbers a state dict's tensors imply (ours, or VideoMAE's names): width, depth, tubelet, patch,
    head classes, decoder width and depth; only those its keys show."""
    arch: dict[str, int] = {}
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 5:  # Conv3d (D, 3, ts, p, p)
        arch.update(dim=w.shape[0], tubelet=w.shape[2], patch=w.shape[3])
    for name, prefix in (("depth", "blocks."), ("decoder_depth", "decoder_blocks.")):
        ids = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
        if ids:
            arch[name] = max(ids) + 1
    if (e2d := state.get("encoder_to_decoder.weight")) is not None:
        arch["decoder_dim"] = e2d.shape[0]
    elif (h := state.get("head.weight")) is not None and h.ndim == 2:
        arch["num_classes"] = h.shape[0]  # a classifier's head (a pretraining model's head is the pixel head)
    return arch


def config_hints(found: dict[str, int], want: dict[str, int]) -> list[str]:
    """`key=value` settings that would make a model of `want`'s architecture match `found`'s."""
    from mgm.model import MODEL_SIZES  # here: mgm.model imports the layers, not needed to read a file

    hints = []
    dim, depth = found.get("dim"), found.get("depth")
    if dim and depth and (dim, depth) != (want.get("dim"), want.get("depth")):
        names = [n for n, s in MODEL_SIZES.items() if s.dim == dim and s.depth == depth]
        known = ", ".join(f"{n} {s.dim}x{s.depth}" for n, s in MODEL_SIZES.items())
        hints.append(f"model.size={names[0]}" if names else f"a size of width {dim}, depth {depth} (known: {known})")
    for key in ("tubelet", "patch", "num_classes", "decoder_dim", "decoder_depth"):
        if key in found and key in want and found[key] != want[key]:
            hints.append(f"model.{key}={found[key]}")
    return hints


def _some(keys: list[str], n: int = 4) -> str:
    """A few names, a block's tensors as one `blocks.4.*`, and how many more."""
    names = list(dict.fromkeys(re.sub(r"^(\w+)\.(\d+)\..*", r"\1.\2.*", k) for k in keys))
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def load_state(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    fresh: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
) -> LoadReport:
    """Copy `state` into `module` when it fits: same names, same shapes.

    fresh: name prefixes of module tensors the checkpoint may lack (they keep their init, e.g. a new head);
    drop: name prefixes of checkpoint tensors to ignore. Any other missing or extra name, or any shape that
    differs, raises `CheckpointMismatch` naming `source`, the tensors with both shapes, and the config keys
    that would fit the checkpoint. Positions are fixed sin-cos buffers, not weights: a checkpoint trained on
    another frame count or input size loads unchanged (the table is recomputed for the config's clip shape).
    """
    target = module.state_dict()
    used = {k: v for k, v in state.items() if not k.startswith(drop)}
    shapes = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(target[k].shape)}"
              for k, v in used.items() if k in target and v.shape != target[k].shape]  # fmt: skip
    missing = [k for k in target if k not in used and not k.startswith(fresh)]
    extra = [k for k in used if k not in target]
    if shapes or missing or extra:
        lines = [f"{source} does not fit the model the config describes:"]
        lines += [f"  {s}" for s in shapes[:6]] + ([f"  ... {len(shapes) - 6} more shapes differ"] * (len(shapes) > 6))
        lines += [f"  missing from the checkpoint: {_some(missing)}"] * bool(missing)
        lines += [f"  in the checkpoint but not in the model: {_some(extra)}"] * bool(extra)
        hints = config_hints(architecture(state), architecture(target))
        lines.append(f"  the checkpoint's tensors fit {', '.join(hints)}" if hints else "")
        raise CheckpointMismatch("\n".join(line for line in lines if line))
    module.load_state_dict(used, strict=False)
    return LoadReport(source, loaded=sorted(used), fresh=sorted(set(target) - set(used)),
                      dropped=sorted(set(state) - set(used)))  # fmt: skip
