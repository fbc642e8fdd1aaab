r"""`AdapterSpec`: which architecture to inject where, with its hyper-parameters (JSON-serialisable).

The generic fields (rank, experts, expert_rank, top_k, scale, router, core_router, shared) are read by
each architecture's own `config_from_spec`; anything else an architecture takes goes into `options`,
keyed by its config field name (`--option key=value` on the command line). `shared` is the
architecture's cross-layer sharing (TalkLoRA's B, CoMoL's A, B); `shared_b` / `shared_ab` are kept as
its old spellings for TalkLoRA / CoMoL and always agree with it.

A layer's *module type* is the target suffix it matched; for a regex, its first group if it has one
(`.*\.(attn\.c_proj|mlp\.c_proj)` gives 'attn.c_proj' and 'mlp.c_proj'), else the last name part.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from moelora_core.errors import ConfigError

from .options import SHARED_ALIASES

__all__ = ["AdapterSpec"]


@dataclass(frozen=True, kw_only=True)
class AdapterSpec:
    """Which architecture to inject where, with its hyper-parameters. JSON-serialisable."""

    arch: str  # a name registered in moelora_core.registry.ARCHITECTURES
    targets: tuple[str, ...] = ()  # module-name suffixes, e.g. ("q_proj", "v_proj")
    target_regex: str | None = None  # or one regex, full-matched against qualified module names
    rank: int = 8  # total rank r (LoRA, TalkLoRA, CoMoL)
    experts: int = 4  # E (MoELoRA, HydraLoRA, TalkLoRA) or N (CoMoL)
    expert_rank: int | None = None  # r_e of the MoE baselines; default rank // experts
    router: str = "input"  # MoELoRA: "input" | "latent"
    top_k: int | None = None
    core_router: bool = True  # CoMoL
    shared: bool = False  # the architecture's part shared by the layers of one module type
    shared_b: bool = False  # = shared, for TalkLoRA (its old name)
    shared_ab: bool = False  # = shared, for CoMoL (its old name)
    scale: float = 1.0  # s = alpha / r
    # other config fields of the architecture, by name; JSON values (not part of the hash)
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        from moelora_core.registry import ARCHITECTURES

        if not isinstance(self.arch, str) or self.arch not in ARCHITECTURES:
            raise ConfigError(f"arch={self.arch!r}: expected one of {sorted(ARCHITECTURES)}")
        self._check_targets()
        self._check_types()
        self._resolve_shared()
        object.__setattr__(self, "options", _checked_options(self.options))
        # the architecture's own checks (rank % E, top_k <= E, router, options, sharing, ...)
        ARCHITECTURES[self.arch].config_from_spec(self, 1, 1)

    def _check_targets(self) -> None:
        raw: object = self.targets  # whatever the caller passed, before it is checked
        if isinstance(raw, str):  # a bare string would become its characters
            raise ConfigError(
                f"targets={raw!r}: expected a tuple of module-name suffixes, e.g. ({raw!r},), "
                "not a string"
            )
        try:
            object.__setattr__(self, "targets", tuple(self.targets))
        except TypeError:
            raise ConfigError(
                f"targets={self.targets!r}: expected a tuple of module-name suffixes"
            ) from None
        if not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(f"targets={self.targets!r}: expected non-empty module-name suffixes")
        if bool(self.targets) == (self.target_regex is not None):
            raise ConfigError(
                f"targets={self.targets!r}, target_regex={self.target_regex!r}: "
                "expected exactly one of them (suffixes or one regex)"
            )
        if self.target_regex is not None:
            if not isinstance(self.target_regex, str):
                raise ConfigError(f"target_regex={self.target_regex!r}: expected a string")
            try:
                re.compile(self.target_regex)
            except re.error as e:
                raise ConfigError(
                    f"target_regex={self.target_regex!r}: not a valid regex ({e})"
                ) from None

    def _check_types(self) -> None:
        for name in ("rank", "experts", "expert_rank", "top_k"):
            v = getattr(self, name)
            if v is None and name in ("expert_rank", "top_k"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r}: expected an integer >= 1")
        for name in ("core_router", "shared", *SHARED_ALIASES):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected True or False")
        s = self.scale
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s):
            raise ConfigError(f"scale={s!r}: expected a finite float")

    def _resolve_shared(self) -> None:
        """`shared` from itself or its alias; the alias of this architecture set to agree with it."""
        for alias, arch in SHARED_ALIASES.items():
            if getattr(self, alias) and self.arch != arch:
                raise ConfigError(
                    f"{alias}=True with arch={self.arch!r}: expected arch={arch!r} (or shared=True)"
                )
        shared = self.shared or any(getattr(self, a) for a in SHARED_ALIASES)
        object.__setattr__(self, "shared", shared)
        for alias, arch in SHARED_ALIASES.items():
            object.__setattr__(self, alias, shared and self.arch == arch)

    def matches(self, name: str) -> str | None:
        """The module type `name` matches (see the module docstring), or None."""
        if self.target_regex is not None:
            found = re.fullmatch(self.target_regex, name)
            if found is None:
                return None
            group = found.group(1) if found.re.groups and found.group(1) else None
            return group or name.rsplit(".", 1)[-1]
        for t in self.targets:
            if name == t or name.endswith("." + t):
                return t
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterSpec:
        """The spec of `to_dict` (also of a file written before `shared` and `options` existed)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"adapter spec keys {unknown}: not recognised; expected a subset of {sorted(known)}"
            )
        kw = dict(d)
        if "targets" in kw:
            kw["targets"] = tuple(kw["targets"])
        return cls(**kw)


def _checked_options(options: object) -> dict[str, Any]:
    """A copy of `options`: string keys, JSON values (they are saved with the adapters)."""
    if not isinstance(options, dict):
        raise ConfigError(f"options={options!r}: expected a dict of config field names to values")
    for key, value in options.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"options key {key!r}: expected a config field name")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ConfigError(
                f"options[{key!r}]={value!r}: expected a JSON value (number, string, bool, null, "
                "list or object)"
            ) from None
    return dict(options)
