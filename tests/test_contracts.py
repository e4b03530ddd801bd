"""mgm.contracts: the loaders (dali_pipes, the tests' fake) and hooks (profiling, NullHook) the engine receives
implement its Protocols with the same method names and parameters, so a renamed keyword fails here, not mid-run."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from _fakes import FakeLoader

from dali_pipes.adapter import DaliLoader
from dali_pipes.cpu_loader import CpuLoader
from mgm.contracts import Hook, Loader, NullHook
from profiling.hooks import ProfileHook


def _methods(proto: type) -> list[str]:
    """The methods a Protocol's own body defines."""
    own = f"{proto.__name__}."
    return [n for n, v in vars(proto).items() if inspect.isfunction(v) and v.__qualname__.startswith(own)]


def _parameters(fn: Any) -> list[tuple[str, Any]]:
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(
    ("proto", "impl"),
    [(Hook, NullHook), (Hook, ProfileHook), (Loader, FakeLoader), (Loader, CpuLoader), (Loader, DaliLoader)],
)
def test_implementations_match_the_protocol(proto: type, impl: type) -> None:
    methods = _methods(proto)
    assert len(methods) == (4 if proto is Hook else 5)
    for name in methods:
        assert _parameters(getattr(impl, name)) == _parameters(getattr(proto, name)), f"{impl.__name__}.{name}"


def test_isinstance_checks_the_methods_are_there() -> None:
    assert isinstance(NullHook(), Hook) and isinstance(FakeLoader(4, 2), Loader)

    class NoEpochs:  # a plain iterable of batches cannot resume: not a Loader
        def __iter__(self) -> Any:
            return iter([])

        def __len__(self) -> int:
            return 0

    assert not isinstance(NoEpochs(), Loader) and not isinstance(FakeLoader(4, 2), Hook)
