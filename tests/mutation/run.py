"""Mutation run: apply each single-point mutant of `catalogue.toml` to a copy of the tree, run
`pytest -m theorems -x` there, and report which mutants the claims kill.

    python tests/mutation/run.py                    # every mutant, one at a time (make mutation)
    python tests/mutation/run.py --only NAME --only NAME2 --skip-baseline
    python tests/mutation/run.py --check            # only check that every snippet applies

Each mutant runs in its own temporary copy of the repository (the working tree is never edited), with
PYTHONPATH pointing at the copy so that the editable install cannot shadow the mutated modules.
Verdicts: killed (a test failed or errored), killed-timeout (ran past --timeout), survived,
equivalent (argued in the catalogue; not run unless --run-equivalent), does-not-apply (the original
snippet is not found exactly once). Exit status 1 if any non-equivalent mutant survives, a snippet does
not apply, or the unmutated baseline fails. Results go atomically to --json after every mutant.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = Path(__file__).resolve().parent / "catalogue.toml"
IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "*.egg-info",
    "runs",
)
PYTEST = ["-m", "pytest", "-m", "theorems", "-x", "-q", "-p", "no:cacheprovider"]
# The same tests, the fast guard files first: with -x most mutants then die within seconds instead of
# after the slower claim files. The files are listed one by one (given `tests` as a directory, pytest
# would run them in directory order whatever came first on the command line).
FAST_FIRST = (
    "tests/test_checker_guards.py",
    "tests/test_init_and_sharing.py",
    "tests/test_certificate_guards.py",
)


def pytest_argv(tests: Sequence[str]) -> list[str]:
    """The pytest command: `tests` if given (development), else every test file, fast ones first
    (files that never mention `theorems` are skipped at collection by tests/conftest.py)."""
    if tests:
        return [*PYTEST, *tests]
    files = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("tests/**/test_*.py"))
    first = [f for f in FAST_FIRST if f in files]
    return [*PYTEST, *first, *(f for f in files if f not in first)]


REQUIRED = ("name", "file", "original", "replacement", "description")


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    description: str
    equivalent: str | None = None


@dataclass
class Result:
    name: str
    verdict: str  # killed | killed-timeout | survived | equivalent | does-not-apply
    seconds: float = 0.0
    detail: str = ""
    returncode: int | None = None


def load_catalogue(path: Path = CATALOGUE) -> list[Mutant]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out: list[Mutant] = []
    for i, entry in enumerate(data.get("mutant", [])):
        missing = [k for k in REQUIRED if not entry.get(k)]
        unknown = set(entry) - {*REQUIRED, "equivalent"}
        if missing or unknown:
            raise SystemExit(f"catalogue entry {i}: missing {missing}, unknown {sorted(unknown)}")
        out.append(Mutant(**entry))
    names = [m.name for m in out]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise SystemExit(f"catalogue: duplicate names {dups}")
    return out


def where_not_applying(m: Mutant, root: Path) -> str | None:
    """None if `m.original` occurs exactly once in `m.file`, else a message that says how to fix it."""
    path = root / m.file
    if not path.is_file():
        return f"{m.file}: no such file"
    text = path.read_text(encoding="utf-8")
    n = text.count(m.original)
    if n == 1:
        return None
    first = m.original.strip().splitlines()[0].strip() if m.original.strip() else m.original
    if n > 1:
        lines = [i + 1 for i, ln in enumerate(text.splitlines()) if first in ln]
        return f"{m.file}: original occurs {n} times (lines {lines}); make it unique"
    stripped = [ln.strip() for ln in text.splitlines()]
    close = difflib.get_close_matches(first, stripped, n=1, cutoff=0.5)
    hint = ""
    if close:
        hint = f"; closest line {stripped.index(close[0]) + 1}: {close[0]!r}"
    return f"{m.file}: original not found ({first!r}){hint}"


def copy_tree(dest: Path, mutant: Mutant | None) -> Path:
    tree = dest / "tree"
    shutil.copytree(ROOT, tree, ignore=IGNORE, symlinks=True)
    if mutant is not None:
        target = tree / mutant.file
        text = target.read_text(encoding="utf-8")
        target.write_text(text.replace(mutant.original, mutant.replacement, 1), encoding="utf-8")
    return tree


def env_for(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


_RUNNING: set[subprocess.Popen[str]] = set()
_LOCK = threading.Lock()
_STOP = threading.Event()


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM: stop like Ctrl-C (kill the running pytest groups, remove the copies)."""
    raise KeyboardInterrupt


def run_in(tree: Path, argv: Sequence[str], timeout: float) -> tuple[int | None, str, float]:
    """Run `python argv` in `tree` in its own process group; (returncode or None on timeout, output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=tree,
        env=env_for(tree),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    with _LOCK:
        _RUNNING.add(proc)
        if _STOP.is_set():  # interrupted while this one was starting
            _kill(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out, time.perf_counter() - start
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, _ = proc.communicate()
        return None, out, time.perf_counter() - start
    except BaseException:  # Ctrl-C in the main thread (baseline): never leave a pytest behind
        _kill(proc)
        raise
    finally:
        with _LOCK:
            _RUNNING.discard(proc)


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group this runner created for its own child


def first_failure(output: str) -> str:
    for pat in (r"^(FAILED|ERROR) (\S+)", r"^E\s+(.+)$"):
        hit = re.search(pat, output, re.M)
        if hit:
            return hit.group(0)[:200]
    tail = [ln for ln in output.strip().splitlines() if ln.strip()]
    return tail[-1][:200] if tail else ""


def check_imports(tree: Path) -> None:
    """The copy, not the editable install, must be what Python imports."""
    code = "import moelora_core, proofs_numeric; print(moelora_core.__file__); print(proofs_numeric.__file__)"
    rc, out, _ = run_in(tree, ["-c", code], 120)
    paths = out.strip().splitlines()
    if rc != 0 or len(paths) != 2 or not all(Path(p).is_relative_to(tree) for p in paths):
        raise SystemExit(f"import check failed: the copy in {tree} is not imported ({out.strip()})")


def run_mutant(
    m: Mutant, timeout: float, run_equivalent: bool, tests: Sequence[str] = ()
) -> Result:
    problem = where_not_applying(m, ROOT)
    if problem is not None:
        return Result(m.name, "does-not-apply", detail=problem)
    if m.equivalent and not run_equivalent:
        return Result(m.name, "equivalent", detail=m.equivalent)
    with tempfile.TemporaryDirectory(prefix=f"mut-{m.name}-") as tmp:
        tree = copy_tree(Path(tmp), m)
        rc, out, secs = run_in(tree, pytest_argv(tests), timeout)
    if rc is None:
        return Result(m.name, "killed-timeout", secs, f"ran past {timeout:.0f} s")
    if rc == 0:
        verdict = "equivalent" if m.equivalent else "survived"
        return Result(m.name, verdict, secs, m.equivalent or "all theorems passed", rc)
    note = " (marked equivalent, but killed)" if m.equivalent else ""
    return Result(m.name, "killed", secs, first_failure(out) + note, rc)


def summary(results: list[Result], mutants: dict[str, Mutant], seconds: float) -> dict[str, Any]:
    count = {v: 0 for v in ("killed", "killed-timeout", "survived", "equivalent", "does-not-apply")}
    for r in results:
        count[r.verdict] += 1
    judged = count["killed"] + count["killed-timeout"] + count["survived"]
    return {
        "mutants": len(results),
        **count,
        "score": (count["killed"] + count["killed-timeout"]) / judged if judged else None,
        "seconds": round(seconds, 1),
        "survivors": [
            {"name": r.name, "description": mutants[r.name].description}
            for r in results
            if r.verdict == "survived"
        ],
        "not_applying": [
            {"name": r.name, "detail": r.detail} for r in results if r.verdict == "does-not-apply"
        ],
    }


def write_json(path: Path, obj: Any) -> None:
    sys.path.insert(0, str(ROOT))
    from proofs_numeric.jsonio import write_json_atomic

    write_json_atomic(path, obj)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", action="append", default=[], help="run only this mutant (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant (default 300)")
    ap.add_argument("--json", type=Path, default=ROOT / "runs" / "mutation.json")
    ap.add_argument("--check", action="store_true", help="only check that every snippet applies")
    ap.add_argument("--list", action="store_true", help="list the catalogue and exit")
    ap.add_argument(
        "--skip-baseline", action="store_true", help="do not run the unmutated tree first"
    )
    ap.add_argument(
        "--tests",
        nargs="+",
        default=[],
        help="run only these test paths (development; the score needs the whole theorems suite)",
    )
    ap.add_argument(
        "--run-equivalent", action="store_true", help="also run mutants argued equivalent"
    )
    args = ap.parse_args(argv)

    catalogue = load_catalogue()
    by_name = {m.name: m for m in catalogue}
    unknown = [n for n in args.only if n not in by_name]
    if unknown:
        print(f"unknown mutant(s): {unknown}", file=sys.stderr)
        return 2
    chosen = [by_name[n] for n in args.only] if args.only else catalogue
    if args.list:
        for m in chosen:
            print(f"{m.name:<40} {m.file:<40} {m.description}")
        return 0
    if args.check:
        bad = [(m.name, p) for m in chosen if (p := where_not_applying(m, ROOT)) is not None]
        for name, p in bad:
            print(f"does-not-apply {name}: {p}")
        print(f"{len(chosen) - len(bad)}/{len(chosen)} snippets apply")
        return 1 if bad else 0

    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C stops cleanly even when the runner was started with SIGINT ignored (in the background)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    start = time.perf_counter()
    baseline: dict[str, Any] = {"skipped": True}
    with tempfile.TemporaryDirectory(prefix="mut-baseline-") as tmp:
        tree = copy_tree(Path(tmp), None)
        check_imports(tree)
        if not args.skip_baseline:
            rc, out, secs = run_in(tree, pytest_argv(args.tests), args.timeout)
            baseline = {"returncode": rc, "seconds": round(secs, 1)}
            print(f"baseline (unmutated): rc={rc} in {secs:.1f} s", flush=True)
            if rc != 0:
                print(out[-4000:])
                print(
                    "the unmutated tree fails `pytest -m theorems`: fix it before judging mutants"
                )
                return 1

    results: list[Result] = []
    done = threading.Lock()

    def one(m: Mutant) -> None:
        if _STOP.is_set():
            return
        r = run_mutant(m, args.timeout, args.run_equivalent, args.tests)
        if _STOP.is_set():  # its pytest was killed by the interrupt: no verdict
            return
        with done:
            results.append(r)
            print(
                f"[{len(results):>3}/{len(chosen)}] {r.verdict:<15} {r.name:<40} "
                f"{r.seconds:6.1f}s  {r.detail}",
                flush=True,
            )
            write_json(args.json, report(results, by_name, start, baseline, args, partial=True))

    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    futures = [pool.submit(one, m) for m in chosen]
    try:
        while not all(f.done() for f in futures):
            wait(futures, timeout=0.5)
        for f in futures:
            f.result()  # re-raise a runner error
    except KeyboardInterrupt:
        _STOP.set()
        pool.shutdown(wait=False, cancel_futures=True)
        with _LOCK:
            for proc in list(_RUNNING):
                _kill(proc)
        pool.shutdown(wait=True)  # the workers return at once and remove their copies
        print(
            f"interrupted after {len(results)} mutants: the working tree was never modified; "
            f"partial results in {args.json}",
            file=sys.stderr,
        )
        return 130
    finally:
        pool.shutdown(wait=True)
    final = report(results, by_name, start, baseline, args, partial=False)
    write_json(args.json, final)
    s = final["summary"]
    print(
        f"\n{s['mutants']} mutants: {s['killed']} killed, {s['killed-timeout']} killed by timeout, "
        f"{s['survived']} survived, {s['equivalent']} equivalent, {s['does-not-apply']} do not apply; "
        f"score {s['score']!s} in {s['seconds']} s (results: {args.json})"
    )
    for sv in s["survivors"]:
        print(f"  SURVIVED {sv['name']}: {sv['description']}")
    for na in s["not_applying"]:
        print(f"  DOES NOT APPLY {na['name']}: {na['detail']}")
    return 1 if s["survived"] or s["does-not-apply"] else 0


def report(
    results: list[Result],
    by_name: dict[str, Mutant],
    start: float,
    baseline: dict[str, Any],
    args: argparse.Namespace,
    *,
    partial: bool,
) -> dict[str, Any]:
    order = {name: i for i, name in enumerate(by_name)}
    ordered = sorted(results, key=lambda r: order[r.name])
    return {
        "partial": partial,
        "jobs": args.jobs,
        "tests": args.tests or "all (-m theorems)",
        "timeout": args.timeout,
        "load_average": list(os.getloadavg()),
        "baseline": baseline,
        "summary": summary(ordered, by_name, time.perf_counter() - start),
        "results": [asdict(r) for r in ordered],
    }


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before the mutants started (copy, import check, baseline)
        print("interrupted: the working tree was never modified", file=sys.stderr)
        sys.exit(130)
