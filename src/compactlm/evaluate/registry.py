"""The built-in tasks by name: one explicit table, built from the definitions in ``tasks`` and ``mmlu``.

Adding a task is one definition (a :mod:`~compactlm.evaluate.kinds` instance in ``tasks.py``)
plus one line in :data:`TASKS`. Nothing registers itself on import; :func:`register` adds a
task of your own at run time.
"""

from __future__ import annotations

from ..errors import unknown_name
from . import mmlu, tasks
from .kinds import Task

TASKS: dict[str, Task] = {t.name: t for t in (
    tasks.HELLASWAG,
    tasks.WINOGRANDE,
    tasks.ARC_EASY,
    tasks.ARC_CHALLENGE,
    tasks.PIQA,
    tasks.BOOLQ,
    tasks.LAMBADA_OPENAI,
    tasks.WIKITEXT2,
    mmlu.MMLU,
)}
ALIASES = {"lambada": "lambada_openai", "wikitext": "wikitext2"}


def register(task: Task) -> Task:
    """Add ``task`` under ``task.name``; a name already taken (or an alias) is refused."""
    if task.name in TASKS or task.name in ALIASES:
        raise ValueError(f"task '{task.name}' is registered twice")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task called ``name`` (or one of its aliases, e.g. ``lambada``)."""
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise unknown_name("task", name, [*TASKS, *ALIASES])
    return TASKS[name]


def available_tasks() -> list[str]:
    return sorted(TASKS)
