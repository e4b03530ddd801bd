"""Profiling: the hook object (`profiling.hooks.ProfileHook`), the shared bench output format
(`profiling.report_format.emit`), plots (`profiling/report.py`) and the benchmark scripts.

Nothing under mgm/ or dali_pipes/ imports this package; the engine receives a hook as an argument.
"""
