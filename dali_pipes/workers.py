"""How the loader's worker processes start, and a clear error for the script mistake that breaks them.

A worker started with "spawn" (or "forkserver") is a fresh interpreter that imports the main script again before
it runs anything. A script that builds and iterates the loader at its top level, outside
`if __name__ == "__main__":`, would do so again in every worker; Python stops such a worker early and the user
sees only "DataLoader worker exited unexpectedly" (or a DALI pipeline that never delivers). `check_main_guard`
finds that case in the main process, before any worker starts, and names the fix. A forked worker imports
nothing, so under "fork" the guard is not needed. Nothing here imports torch.
"""

from __future__ import annotations

import ast
import multiprocessing
import sys
from pathlib import Path
from types import ModuleType


def dali_loaded() -> bool:
    """Whether DALI's native backend (and its thread pools) is loaded in this process."""
    return "nvidia.dali.backend" in sys.modules


def cpu_start_method() -> str:
    """Start method for the PyAV fallback's DataLoader workers: "spawn" when DALI is loaded, else the default.

    Forking a process that runs DALI's native threads can deadlock the child (a lock held by a thread that does
    not exist there), so with DALI loaded the workers start clean. Otherwise the process's default start method
    (fork on Linux up to Python 3.13) is safe: DALI is not there to fork, and the workers never touch CUDA (they
    decode on the CPU and return uint8 CPU tensors; the main process pins and copies them), so a CUDA context in
    the parent does not matter, as with any torch DataLoader. Fork also needs no main guard.
    """
    if dali_loaded():
        return "spawn"
    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]


def check_main_guard(method: str, who: str, fallback: str = "") -> None:
    """Raise RuntimeError naming the fix when workers started with `method` would run the calling script again.

    That is the case when this call comes from the main script's top-level code outside an
    `if __name__ == "__main__":` block. "fork" needs no guard; a notebook, an interactive session or `python -c`
    has no script for a worker to import. `who` names the workers, `fallback` offers another way out.
    """
    if method == "fork":
        return
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if main is None or not script:
        return
    line = _top_level_line(main)
    if line is None or _guarded(Path(script), line):
        return
    guard = 'if __name__ == "__main__":'
    raise RuntimeError(
        f"{script}, line {line}: the loader is built at the top level of the script, outside `{guard}`. {who} "
        f"start with {method!r}: each one imports {Path(script).name} again and would build the loader again, and "
        "the run would end in 'worker exited unexpectedly'. Fix: put the code that builds and iterates the loader "
        f"under `{guard}` (README, 'Drop-in loader'){fallback}."
    )


def _top_level_line(main: ModuleType) -> int | None:
    """Line of the main script's module-level code that is running now (the line that led to this call), or None
    when the call does not come from the script's top level (a test runner, a thread, a callback)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            return frame.f_lineno
        frame = frame.f_back
    return None


def _guarded(script: Path, line: int) -> bool:
    """Whether `line` of `script` lies in the main-only branch of an `if __name__ == "__main__":` (or `!=`)."""
    try:
        tree = ast.parse(script.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return True  # nothing to judge by: do not stand in the way
    for node in ast.walk(tree):
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1):
            continue
        sides = [node.test.left, *node.test.comparators]
        names = {n.id for n in sides if isinstance(n, ast.Name)}
        consts = {n.value for n in sides if isinstance(n, ast.Constant)}
        if names != {"__name__"} or consts != {"__main__"}:
            continue
        op = node.test.ops[0]
        branch = node.body if isinstance(op, ast.Eq) else node.orelse if isinstance(op, ast.NotEq) else []
        if branch and branch[0].lineno <= line <= (branch[-1].end_lineno or branch[-1].lineno):
            return True
    return False
