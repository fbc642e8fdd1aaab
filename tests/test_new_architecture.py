"""A newly registered architecture works in the experiments without editing them: `moelora params`
(meta path), injection, PEFT (a config generated from its core config), and both trainers add its
auxiliary loss (`w · Σ ℓ_a`, here ℓ = balance · ‖A‖²)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from moelora_core.adapter import AdapterSpecLike
from moelora_core.lora import LoRA, LoRAConfig
from moelora_core.registry import ARCHITECTURES
from moelora_core.spec import refuse_shared, spec_options
from moelora_experiments.auxiliary import adapters_of, auxiliary_loss, with_auxiliary
from moelora_experiments.cli import app
from moelora_experiments.inject import AdapterSpec, inject_adapters, trainable_report
from moelora_experiments.train import TrainConfig, train

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


@dataclass(frozen=True, kw_only=True)
class BalancedLoRAConfig(LoRAConfig):
    balance: float = 0.5  # the auxiliary loss is balance · ‖A‖²


class BalancedLoRA(LoRA):
    """LoRA with an auxiliary loss of known value: balance · ‖A‖_F²."""

    family: ClassVar[str] = "balancedlora"
    config_class: ClassVar[type] = BalancedLoRAConfig
    config: BalancedLoRAConfig

    @classmethod
    def config_from_spec(
        cls, spec: AdapterSpecLike, in_features: int, out_features: int
    ) -> BalancedLoRAConfig:
        refuse_shared(cls.family, spec)
        extra = spec_options(BalancedLoRAConfig, spec, {"rank", "scale"})
        return BalancedLoRAConfig(
            in_features=in_features,
            out_features=out_features,
            rank=spec.rank,
            scale=spec.scale,
            **extra,
        )

    def auxiliary_loss(self) -> Tensor:
        return self.config.balance * (self.A.weight**2).sum()


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(ARCHITECTURES, "balancedlora", BalancedLoRA)
    return "balancedlora"


def expected_aux(model: nn.Module) -> float:
    return sum(
        a.config.balance * float((a.A.weight.detach() ** 2).sum())
        for a in adapters_of(model)
        if isinstance(a, BalancedLoRA)
    )


def test_params_counts_a_registered_architecture(registered: str) -> None:
    args = ["params", "--config", str(CONFIGS / "tiny-llama.json"), "--arch", registered]
    r = CliRunner().invoke(app, [*args, "--rank", "4", "--option", "balance=0.25", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["formula_agrees"] and out["spec"]["options"] == {"balance": 0.25}
    assert out["total_trainable"] == 2 * 4 * ((32 + 32) * 2 + (32 + 16) * 2 + (48 + 32))
    bad = CliRunner().invoke(app, [*args, "--option", "nope=1"])
    assert bad.exit_code == 2 and "nope" in bad.output


def test_spec_options_reach_the_config_and_round_trip(registered: str) -> None:
    spec = AdapterSpec(arch=registered, targets=("q",), rank=2, options={"balance": 0.125})
    assert AdapterSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    model = nn.Sequential()
    model.add_module("q", nn.Linear(4, 4))
    layers = inject_adapters(model, spec)
    adapter = layers["q"].adapter
    assert isinstance(adapter, BalancedLoRA) and adapter.config.balance == 0.125
    assert trainable_report(model).adapter_trainable == 2 * (4 + 4)


def _head_model(spec: AdapterSpec) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("q", nn.Linear(6, 6))
    model.add_module("head", nn.Linear(6, 2))
    inject_adapters(model, spec)
    return model


def _loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return nn.functional.cross_entropy(model(batch["x"]), batch["y"])


def test_native_trainer_adds_the_weighted_auxiliary_loss(registered: str, tmp_path: Path) -> None:
    spec = AdapterSpec(arch=registered, targets=("q",), rank=2)
    gen = torch.Generator().manual_seed(1)
    X, Y = torch.randn(16, 6, generator=gen), torch.randint(0, 2, (16,), generator=gen)

    def batch(idx: list[int]) -> dict[str, Tensor]:
        return {"x": X[idx], "y": Y[idx]}

    losses = {}
    for w in (0.0, 0.5):
        model = _head_model(spec)
        aux = expected_aux(model)
        cfg = TrainConfig(steps=1, batch_size=4, aux_loss_weight=w, progress=False)
        losses[w] = train(model, 16, batch, _loss, cfg, tmp_path / str(w)).losses[0]
        saved = json.loads(next((tmp_path / str(w)).rglob("state.json")).read_text())
        assert saved["config"]["aux_loss_weight"] == w  # recorded with the run
    assert aux > 0 and losses[0.5] - losses[0.0] == pytest.approx(0.5 * aux, rel=1e-5)


def test_with_auxiliary_sums_only_adapters_that_return_a_term(registered: str) -> None:
    model = _head_model(AdapterSpec(arch=registered, targets=("q",), rank=2))
    plain = LoRA(LoRAConfig(in_features=2, out_features=2, rank=1))  # returns None
    adapters = [*adapters_of(model), plain]
    total = auxiliary_loss(adapters)
    assert total is not None and float(total.detach()) == pytest.approx(expected_aux(model))
    assert auxiliary_loss([plain]) is None
    zero = torch.tensor(1.5)
    assert with_auxiliary(zero, adapters, 0.0) is zero
    assert float(with_auxiliary(zero, adapters, 2.0).detach()) == pytest.approx(
        1.5 + 2 * expected_aux(model)
    )


def test_peft_config_is_generated_and_trainer_adds_auxiliary_loss(
    registered: str, lm: Path, tmp_path: Path
) -> None:
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from moelora_experiments.hf_data import collator, instruction_dataset
    from moelora_experiments.hf_train import HFRunOptions, make_trainer, training_args
    from moelora_experiments.loading import Placement, load_tokenizer
    from moelora_experiments.peft_bridge import peft_config_for
    from moelora_experiments.peft_methods import peft_method

    config_cls = peft_method(registered)
    assert "balance" in {f.name for f in dataclasses.fields(config_cls)}
    spec = AdapterSpec(arch=registered, targets=("q_proj",), rank=2, options={"balance": 0.25})
    made = peft_config_for(spec)
    assert (
        isinstance(made, config_cls)
        and made.balance == 0.25
        and made.to_spec().options == {"balance": 0.25}
    )
    tok = load_tokenizer(str(lm / "model"))
    ds = instruction_dataset(tok, 200, data=str(lm / "train.json"))
    logged: dict[float, Any] = {}
    for w in (0.0, 2.0):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(lm / "model"), made)
        aux = expected_aux(model)
        cfg = TrainConfig(steps=1, batch_size=2, warmup_steps=0, checkpoint_every=1)
        opts = HFRunOptions(placement=Placement(device="cpu"), logging_steps=1)
        args = training_args(cfg, tmp_path / str(w), opts, False)
        trainer = make_trainer(model, args, ds, None, collator(tok), aux_loss_weight=w)
        trainer.train()
        logged[w] = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    assert aux > 0 and logged[2.0] - logged[0.0] == pytest.approx(2.0 * aux, rel=1e-3)
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BALANCEDLORA" and saved["balance"] == 0.25
    again = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(lm / "model"), tmp_path / "adapter"
    )
    assert sum(isinstance(a, BalancedLoRA) for a in adapters_of(again)) == len(adapters_of(model))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(6, 6)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.q(x)
        return out


def test_save_load_and_measure_a_registered_architecture(registered: str, tmp_path: Path) -> None:
    from moelora_experiments.checkpoint import load_adapters, save_adapters
    from moelora_experiments.measure import measure_adapted_model

    spec = AdapterSpec(arch=registered, targets=("q",), rank=2, options={"balance": 0.75})
    torch.manual_seed(0)
    model = _Tiny()
    inject_adapters(model, spec)
    with torch.no_grad():
        model.q.adapter.B.weight.normal_()  # a non-zero Δ, so that the reload is checked
    save_adapters(model, tmp_path, spec)
    torch.manual_seed(0)
    again = _Tiny()  # the same base weights; its adapters come from the files
    load_adapters(again, tmp_path)
    assert again.q.spec == spec and again.q.adapter.config.balance == 0.75
    x = torch.randn(2, 3, 6)
    assert torch.equal(again(x), model(x))
    out = measure_adapted_model(again, [{"x": x}], max_tokens=4)
    assert out["q"]["arch"] == registered and out["q"]["tokens"] == 4
    assert out["q"]["bounds"] is None and out["q"]["amplification"] is None  # unrouted


def test_measure_asks_the_gate_what_it_guarantees() -> None:
    """No certified router bound for a gate declared not ½‖W‖-Lipschitz (the report says why); a
    k-hot mask gate's routing statistics are those of the uniform distribution over its k experts."""
    from moelora_core.moelora import MoELoRA, MoELoRAConfig
    from moelora_experiments.measure import measure_layer

    class Refuted(MoELoRA):
        router_lipschitz = "refuted"

    class Masked(MoELoRA):
        routing_kind = "mask"

        def routing(self, x: Tensor) -> Tensor:
            g = super().routing(x)  # (..., E), top-2 renormalised
            return (g > 0).to(g.dtype)  # exactly 2 ones

    cfg = MoELoRAConfig(in_features=8, out_features=8, num_experts=4, expert_rank=2, top_k=2)
    X = torch.randn(30, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain = measure_layer(MoELoRA(cfg).randomize_(0), X)["bounds"]
    assert not any("no certified bound" in note for note in plain["notes"])
    refuted = measure_layer(Refuted(cfg).randomize_(0), X)["bounds"]
    assert any("no certified bound" in note for note in refuted["notes"])
    masked = measure_layer(Masked(cfg).randomize_(0), X)
    assert masked["routing"]["max_load_share"] <= 0.5 + 1e-12  # each token spreads 1/2, 1/2
