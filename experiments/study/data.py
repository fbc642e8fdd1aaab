"""The study's tasks, offline, from text shipped in PyPI packages.

* `vader`: the demo's binary sentiment of VADER lexicon entries (`experiments.tasks.vader_task`).
* `multi`: a multi-task mixture in which the same word carries different labels depending on a task
  prefix, so that an adapter must compute task-conditionally (where a mixture of experts should help):

      "<task>: <word>" -> 1 if the word has the property, else 0,   task ∈ {sentiment, fear, anger,
                                                                            joy, trust}

  sentiment from the VADER lexicon (|mean rating| >= 1, label = mean > 0); fear/anger/joy/trust from
  the NRC Emotion Lexicon (Mohammad & Turney 2013) shipped as `nrclex/data/nrc_en.json` in the
  `nrclex` package (6,468 words with at least one association): positive = the word is associated with
  the emotion, negative = a lexicon word that is not. Each sub-task is balanced (`per_task` / 2 of each
  label, seed-0 sample); the split (20% test) is seed 0 per sub-task, independent of the training seed.

`export_tasks` writes the tasks to one JSON file so a machine without these packages can run them.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Any

from moelora_core.errors import ConfigError

from ..tasks import TextTask, vader_lexicon_path, vader_task

EMOTIONS = ("fear", "anger", "joy", "trust")


def nrc_lexicon_path() -> Path:
    """nrc_en.json inside the installed `nrclex` package (read as data; the package is not imported)."""
    spec = importlib.util.find_spec("nrclex")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("task 'multi': the nrclex package is not installed (pip install nrclex)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "nrc_en.json"


def _balanced(
    items: list[tuple[str, int]], per_task: int, rng: random.Random
) -> list[tuple[str, int]]:
    pos = [x for x in items if x[1] == 1]
    neg = [x for x in items if x[1] == 0]
    k = min(per_task // 2, len(pos), len(neg))
    return rng.sample(pos, k) + rng.sample(neg, k)


def multi_task(per_task: int = 600, test_fraction: float = 0.2) -> TextTask:
    """The prefixed mixture described in the module docstring."""
    if per_task < 10:
        raise ConfigError(f"per_task={per_task}: expected >= 10 examples per sub-task")
    nrc: dict[str, list[str]] = json.loads(nrc_lexicon_path().read_text(encoding="utf-8"))
    vader = vader_task(1.0, path=vader_lexicon_path())
    subtasks: dict[str, list[tuple[str, int]]] = {
        "sentiment": [(t, y) for t, y in vader.train + vader.test if " " not in t]
    }
    for emo in EMOTIONS:
        subtasks[emo] = [(w, int(emo in tags)) for w, tags in sorted(nrc.items())]
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for name, items in subtasks.items():
        chosen = [(f"{name}: {t}", y) for t, y in _balanced(items, per_task, random.Random(0))]
        random.Random(0).shuffle(chosen)
        n_test = max(1, round(test_fraction * len(chosen)))
        test += chosen[:n_test]
        train += chosen[n_test:]
    random.Random(0).shuffle(train)
    return TextTask(f"multi({'+'.join(subtasks)})", train=train, test=test)


def load_task(name: str, per_task: int, data: str | None = None) -> TextTask:
    """A task by name, from the installed packages or from an `export_tasks` file."""
    if data is not None:
        if not Path(data).is_file():
            raise ConfigError(f"data={data!r}: expected a tasks JSON file (--export-tasks)")
        blob: dict[str, Any] = json.loads(Path(data).read_text(encoding="utf-8"))
        if name not in blob:
            raise ConfigError(f"task={name!r}: not in {data} (has {sorted(blob)})")
        t = blob[name]
        pairs = [[(str(x), int(y)) for x, y in t[k]] for k in ("train", "test")]
        return TextTask(str(t["name"]), train=pairs[0], test=pairs[1])
    if name == "vader":
        t = vader_task(1.0)
        return TextTask(t.name, train=t.train, test=t.test[: max(200, per_task)])
    if name == "multi":
        return multi_task(per_task)
    raise ConfigError(f"task={name!r}: expected 'vader' or 'multi'")


def export_tasks(path: str | Path, names: tuple[str, ...], per_task: int) -> Path:
    from proofs_numeric.jsonio import write_json_atomic

    blob = {}
    for n in names:
        t = load_task(n, per_task)
        blob[n] = {"name": t.name, "train": t.train, "test": t.test}
    write_json_atomic(path, blob, indent=0)
    return Path(path)
