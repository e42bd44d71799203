"""A script that starts worker processes outside `if __name__ == "__main__":`, refused at once.

grain's data workers are spawned: each starts a fresh interpreter that runs the user's main
script again (as `__mp_main__`) before it unpickles its work. A script whose call into the
streaming pipeline (or `train_and_evaluate`) is not under the guard therefore makes every
worker start the same run again: the lease refuses it, the worker dies, grain restarts it,
and the run ends minutes later in a grain traceback (with another workdir each worker would
train). `check` finds that call in the script before any worker is started, from the stack
and the script's own source, as `multiprocessing.spawn` would re-run it.
"""
from __future__ import annotations

import ast
import os
import sys
from typing import Optional


def _rerun_by_spawn(main) -> Optional[str]:
    """The file a spawned process runs again before its work, or None (an interactive
    session, `python -c`, `python -m package`: spawn re-runs none of these)."""
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return None
    path = getattr(main, "__file__", None)
    if not path or os.path.splitext(os.path.basename(path))[0] == "ipython":
        return None
    return path if os.path.isfile(path) else None


def _is_main_test(node: ast.expr) -> bool:
    """`__name__ == "__main__"` (either way round; or one term of an `and`)."""
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return any(_is_main_test(v) for v in node.values)
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1
            and isinstance(node.ops[0], ast.Eq)):
        return False
    sides = [node.left, node.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


def _guarded(source: str, line: int) -> bool:
    """Whether `line` of the module lies in the body of a top-level `if __name__ ==
    "__main__":` (what a spawned process, whose `__name__` is `__mp_main__`, skips)."""
    for node in ast.parse(source).body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return isinstance(node, ast.If) and _is_main_test(node.test) and any(
                child.lineno <= line <= (child.end_lineno or child.lineno)
                for child in node.body)
    return True  # not a statement of this source: nothing to say


def check(workers: int) -> None:
    """Raises ValueError (one line naming the script's line) when `workers` > 0 worker
    processes are about to be used from a main script's top-level code that is not under
    `if __name__ == "__main__":`. Call it before anything starts; it costs one look at the
    stack (and, for a script, at its source)."""
    main = sys.modules.get("__main__")
    path = _rerun_by_spawn(main) if workers > 0 and main is not None else None
    if path is None:
        return
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main)
                                     and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:  # not called from the script's top level (a thread, a REPL)
        return
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        guarded = _guarded(source, frame.f_lineno)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return
    if not guarded:
        raise ValueError(
            f"{path}, line {frame.f_lineno}: put this under `if __name__ == \"__main__\":` "
            f"(the streaming pipeline's {workers} data worker process(es) each run this "
            "script again, and without the guard each would start it all over), or set "
            "data.workers=0")
