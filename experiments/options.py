"""Command-line options shared by the commands that build an `AdapterSpec` (`params`, `train`).

Torch-free (`moelora params` answers known model types without importing torch): the registered
architecture names are read from `moelora_core/registry.py`'s source, not imported.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import typer

# the old per-architecture spellings of `--shared`: {field: the architecture it belongs to}
SHARED_ALIASES = {"shared_b": "talklora", "shared_ab": "comol"}


@cache
def registered_architectures() -> tuple[str, ...]:
    """The names in `moelora_core.registry.ARCHITECTURES`, read from its source (nothing imported);
    imported only if the source does not spell them as a dict literal."""
    spec = importlib.util.find_spec("moelora_core")  # a top-level package: located, not run
    if spec is not None and spec.origin is not None:
        tree = ast.parse((Path(spec.origin).parent / "registry.py").read_text(encoding="utf-8"))
        for node in tree.body:
            names = _dict_keys(node, "ARCHITECTURES")
            if names is not None:
                return names
    from moelora_core.registry import ARCHITECTURES

    return tuple(ARCHITECTURES)


def _dict_keys(node: ast.stmt, name: str) -> tuple[str, ...] | None:
    """The string keys of `name = {...}` (or `name: T = {...}`); None for any other statement."""
    target: ast.expr | None = node.target if isinstance(node, ast.AnnAssign) else None
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
    value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
    if not (isinstance(target, ast.Name) and target.id == name and isinstance(value, ast.Dict)):
        return None
    keys = [k.value for k in value.keys if isinstance(k, ast.Constant)]
    if len(keys) != len(value.keys) or not all(isinstance(k, str) for k in keys):
        return None
    return tuple(str(k) for k in keys)


def resolve_shared(arch: str, shared: bool, **aliases: bool) -> dict[str, bool] | None:
    """`shared` and its aliases as `AdapterSpec` stores them (the alias of `arch` equal to `shared`,
    the others False); None when an alias names another architecture's sharing."""
    if any(on and SHARED_ALIASES[name] != arch for name, on in aliases.items()):
        return None
    shared = shared or any(aliases.values())
    return {"shared": shared} | {a: shared and owner == arch for a, owner in SHARED_ALIASES.items()}


class OptionError(ValueError):
    """A malformed command-line option (reported as one line, exit status 2)."""


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """`["key=value", ...]` (the repeatable `--option`) as a dict; each value read as JSON when it
    is JSON (`0.01`, `true`, `[1, 2]`), else kept as a string (`orthogonal`)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OptionError(f"--option {item!r}: expected key=value, e.g. balance_weight=0.01")
        if key in out:
            raise OptionError(f"--option {key}: given twice; expected each key once")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def spec_kwargs(
    *,
    arch: str,
    rank: int,
    experts: int,
    expert_rank: int | None,
    router: str,
    top_k: int | None,
    core_router: bool,
    shared: bool,
    shared_b: bool,
    shared_ab: bool,
    option: list[str] | None,
) -> dict[str, Any]:
    """`AdapterSpec` keyword arguments from the common command-line options (targets aside)."""
    kw: dict[str, Any] = {
        "arch": arch,
        "rank": rank,
        "experts": experts,
        "expert_rank": expert_rank,
        "router": router,
        "top_k": top_k,
        "core_router": core_router,
        "options": parse_options(option),
    }
    resolved = resolve_shared(arch, shared, shared_b=shared_b, shared_ab=shared_ab)
    # an alias of another architecture is passed as given: AdapterSpec says what is wrong
    kw.update(resolved or {"shared": shared, "shared_b": shared_b, "shared_ab": shared_ab})
    return kw


def arch_option(default: str) -> Any:
    return typer.Option(
        default,
        "--arch",
        help="A registered architecture: " + ", ".join(registered_architectures()) + ".",
    )


RANK = typer.Option(16, "--rank", help="Total rank r.")
EXPERT_RANK = typer.Option(
    None, "--expert-rank", help="MoE baselines' per-expert rank (default r // E)."
)
ROUTER = typer.Option("input", "--router", help="MoELoRA router: input or latent.")
TOP_K = typer.Option(None, "--top-k", help="Keep the k largest routing weights.")
CORE_ROUTER = typer.Option(
    True, "--core-router/--no-core-router", help="CoMoL: route on A x (else on x)."
)
SHARED = typer.Option(
    False,
    "--shared",
    help="Share the architecture's shared part (TalkLoRA B, CoMoL A, B) across the layers of one "
    "module type.",
)
SHARED_B = typer.Option(False, "--shared-b", help="TalkLoRA: the same as --shared.")
SHARED_AB = typer.Option(False, "--shared-ab", help="CoMoL: the same as --shared.")
OptionList = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        help="key=value: another config field of the architecture (repeatable; JSON values, "
        "e.g. --option balance_weight=0.01).",
    ),
]
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
DTYPE = typer.Option(
    "auto", "--dtype", help="Base model dtype: auto, float32, bfloat16 or float16."
)
DEVICE_MAP = typer.Option(
    None, "--device-map", help="from_pretrained device map, e.g. auto (spreads big models)."
)
LOAD_IN_4BIT = typer.Option(
    False, "--load-in-4bit", help="4-bit NF4 base via bitsandbytes (CUDA GPU only)."
)
