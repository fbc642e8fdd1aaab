"""The claims generated from the architectures' declarations (`proofs_numeric/catalogue/declared.py`):
each holds or is refuted as declared, every registered architecture's reductions are covered, and the
generator gives a new architecture its claims without an edit to any catalogue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis.strategies import SearchStrategy

from moelora_core.adapter import Reduction, RouterLipschitz
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.registry import ARCHITECTURES
from proofs_numeric.catalogue.declared import DECLARED_CLAIMS, claim_name, declared_claims
from proofs_numeric.checking import Claim, ClaimError, check_claim
from proofs_numeric.strategies import CONFIG_STRATEGIES, moelora_configs


@pytest.mark.theorems
@pytest.mark.parametrize("claim", DECLARED_CLAIMS, ids=lambda c: c.name)
def test_declared_claim_as_declared(claim: Claim[Any]) -> None:
    report = check_claim(claim)
    assert report.as_expected, "\n".join(
        [report.line(), report.raised, str(report.counterexample), report.detail]
    )
    if claim.expect == "refuted":
        assert report.counterexample is not None


def test_every_declaration_has_its_claims() -> None:
    names = {c.name for c in DECLARED_CLAIMS}
    for family, cls in ARCHITECTURES.items():
        for red in cls.reductions():
            assert claim_name(family, red.name) in names
            twin = claim_name(family, red.name) + "__unprepared"
            assert (twin in names) == red.unprepared_fails
        half = f"{family}_router_half_norm_lipschitz"
        assert (half in names) == (cls.router_lipschitz == "refuted")
    assert claim_name("moelora", "moelora_in_comol") == "moelora_in_comol"
    assert claim_name("comol", "equal_cores_is_lora") == "comol_equal_cores_is_lora"


@dataclass(frozen=True, kw_only=True)
class _TopOneConfig(MoELoRAConfig):
    """MoELoRA's config under another name: a new registered architecture's config class."""


class _TopOne(MoELoRA):
    """A MoELoRA declaring what the generator reads: one reduction, and its top-1 gate (a jump
    between experts: not ½‖W‖-Lipschitz) declared refuted."""

    family: ClassVar[str] = "top_one"
    config_class: ClassVar[type] = _TopOneConfig
    router_lipschitz: ClassVar[RouterLipschitz] = "refuted"

    @classmethod
    def reductions(cls) -> tuple[Reduction, ...]:
        return tuple(r for r in MoELoRA.reductions() if r.name == "identical_experts_is_lora")


@dataclass(frozen=True, kw_only=True)
class _SoftConfig(MoELoRAConfig):
    pass


class _SoftDeclaredRefuted(MoELoRA):
    """A softmax gate (½‖W‖-Lipschitz) wrongly declared refuted: the search must not invent a pair."""

    family: ClassVar[str] = "soft"
    config_class: ClassVar[type] = _SoftConfig
    router_lipschitz: ClassVar[RouterLipschitz] = "refuted"

    @classmethod
    def reductions(cls) -> tuple[Reduction, ...]:
        return ()


def _top_one_configs(**kw: Any) -> SearchStrategy[_TopOneConfig]:
    return moelora_configs(num_experts=2, top_k=False).map(
        lambda c: _TopOneConfig(**{**vars(c), "top_k": 1})
    )


def _soft_configs(**kw: Any) -> SearchStrategy[_SoftConfig]:
    return moelora_configs(top_k=False).map(lambda c: _SoftConfig(**vars(c)))


@pytest.mark.theorems
def test_a_newly_registered_architecture_gets_its_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering (a registry line and a strategy entry) is all it takes; the search is sound."""
    for family, cls, strategy in (
        ("top_one", _TopOne, _top_one_configs),
        ("soft", _SoftDeclaredRefuted, _soft_configs),
    ):
        monkeypatch.setitem(ARCHITECTURES, family, cls)
        monkeypatch.setitem(CONFIG_STRATEGIES, family, strategy)
    by_name = {c.name: c for c in declared_claims()}
    new = {n for n in by_name if n.startswith(("top_one_", "soft_"))}
    assert new == {
        "top_one_identical_experts_is_lora",
        "top_one_identical_experts_is_lora__unprepared",
        "top_one_router_half_norm_lipschitz",
        "soft_router_half_norm_lipschitz",
    }
    assert check_claim(by_name["top_one_identical_experts_is_lora"]).holds
    assert not check_claim(by_name["top_one_identical_experts_is_lora__unprepared"]).holds
    jump = check_claim(by_name["top_one_router_half_norm_lipschitz"])
    assert not jump.holds and not jump.raised, jump.detail  # the top-1 jump is found
    soft = check_claim(by_name["soft_router_half_norm_lipschitz"], max_examples=10)
    assert soft.holds and not soft.raised, soft.detail  # a softmax never exceeds ½‖W‖


def test_an_architecture_without_a_strategy_is_refused() -> None:
    with pytest.raises(ClaimError, match="CONFIG_STRATEGIES"):
        declared_claims({"top_one": _TopOne}, dict(CONFIG_STRATEGIES))
