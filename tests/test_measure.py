"""Hidden-state capture, noise amplification, and `moelora bounds` on tiny saved runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from moelora_core import MoELoRA, MoELoRAConfig, TalkLoRA, TalkLoRAConfig
from moelora_experiments.checkpoint import save_adapters
from moelora_experiments.cli import app
from moelora_experiments.inject import AdapterSpec, adapted_layers, inject_adapters
from moelora_experiments.measure import (
    amplification,
    capture_inputs,
    measure_layer,
    measure_model,
    with_identity_talk,
)
from moelora_experiments.study.model import build_classifier
from moelora_experiments.tasks import (
    MeanPoolClassifier,
    load_encoder,
    text_batches,
    vader_task,
    write_char_tokenizer,
)


def test_capture_returns_the_hidden_states_of_real_tokens(tiny: Path) -> None:
    encoder, tok = load_encoder(str(tiny))
    model = MeanPoolClassifier(encoder, 32)
    inject_adapters(model, AdapterSpec(arch="talklora", targets=("query",), rank=8, experts=4))
    texts = ["good", "a rather long phrase", "bad!"]
    batches = text_batches(tok, texts, 16, batch=2)  # two batches, padded differently
    X = capture_inputs(model, batches)
    assert set(X) == {
        "encoder.encoder.layer.0.attention.self.query",
        "encoder.encoder.layer.1.attention.self.query",
    }
    # layer 0's query reads the embedding output; layer 1's the output of layer 0 (real tokens only)
    expected: list[list[torch.Tensor]] = [[], []]
    assert model.training  # capture restores the mode; compare without dropout
    model.eval()
    with torch.no_grad():
        for b in batches:
            hs = model.encoder(**b, output_hidden_states=True).hidden_states
            mask = b["attention_mask"].bool()
            expected[0].append(hs[0][mask])
            expected[1].append(hs[1][mask])
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    for (_, x), e in zip(sorted(X.items()), expected, strict=True):
        assert x.shape == (n_tokens, 32) and x.dtype == torch.float64
        torch.testing.assert_close(x, torch.cat(e).double(), rtol=1e-6, atol=1e-6)
    assert (
        capture_inputs(model, batches, max_tokens=5)[
            "encoder.encoder.layer.0.attention.self.query"
        ].shape[0]
        == 5
    )
    all_positions = sum(b["attention_mask"].numel() for b in batches)
    assert n_tokens < all_positions  # padding was really dropped


def two_expert_router(seed: int) -> MoELoRA:
    torch.manual_seed(seed)
    return MoELoRA(
        MoELoRAConfig(in_features=6, out_features=5, num_experts=2, expert_rank=1),
        dtype=torch.float64,
    ).randomize_(seed)


def test_amplification_matches_the_two_expert_closed_form() -> None:
    """E = 2: g = (σ(t), 1 − σ(t)), t = (w_1 − w_2)·x, so ‖Δg‖ = √2 |σ(t') − σ(t)|."""
    a = two_expert_router(0)
    X = torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    got = amplification(a, X, [0.1], seed=4)
    assert got is not None
    assert a.router is not None
    W = a.router.logits.dense().detach()
    w = W[0] - W[1]
    gen = torch.Generator().manual_seed(4)
    rms = X.norm(dim=-1, keepdim=True) / math.sqrt(6)
    delta = 0.1 * rms * torch.randn(X.shape, generator=gen, dtype=X.dtype)
    ratio = (
        math.sqrt(2)
        * (torch.sigmoid((X + delta) @ w) - torch.sigmoid(X @ w)).abs()
        / delta.norm(dim=-1)
    )
    assert got["0.1"]["mean"] == pytest.approx(float(ratio.mean()), rel=1e-12)
    assert got["0.1"]["max"] == pytest.approx(float(ratio.max()), rel=1e-12)
    wrong = (ratio / math.sqrt(2)).mean()  # the twin without the √2 of two opposite coordinates
    assert got["0.1"]["mean"] != pytest.approx(float(wrong), rel=1e-3)


def test_amplification_stays_under_the_certified_bound_and_a_halved_bound_fails() -> None:
    a = TalkLoRA(
        TalkLoRAConfig(in_features=12, out_features=7, rank=8, num_experts=4), dtype=torch.float64
    ).randomize_(3, std=1.0)
    X = torch.randn(64, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m = measure_layer(a, X, scales=(0.01, 0.1))
    up = m["bounds"]["upper_centred"]
    worst = max(v["max"] for v in m["amplification"].values())
    assert worst <= up
    assert max(worst, m["bounds"]["lower"]) > up / 2  # the measurement can see a too-small bound
    assert m["routing"]["num_experts"] == 4 and m["bounds"]["talk"]["talk_norm"] > 0
    assert amplification(
        MoELoRA(
            MoELoRAConfig(in_features=12, out_features=7, num_experts=1, expert_rank=2)
        ).double(),
        X,
        [0.1],
    ) == {"0.1": {"mean": 0.0, "max": 0.0}}  # one expert: a constant router


def test_identity_talk_copy_leaves_the_original_alone() -> None:
    a = TalkLoRA(
        TalkLoRAConfig(in_features=12, out_features=7, rank=8, num_experts=4), dtype=torch.float64
    ).randomize_(5)
    T = a.T.weight.detach().clone()
    twin = with_identity_talk(a)
    assert torch.equal(twin.T.weight, torch.eye(4, dtype=torch.float64)) and torch.equal(
        a.T.weight, T
    )
    assert (
        torch.equal(twin.A.weight, a.A.weight) and twin.A.weight.data_ptr() != a.A.weight.data_ptr()
    )


def save_classifier_run(run: Path, tiny: Path, archs: tuple[str, ...]) -> dict[str, Any]:
    """`run/<arch>/adapter/` for each arch: a mean-pool classifier on VADER texts with seeded random
    adapters and head (as if trained), saved with `save_adapters`; returns {arch: measure_model of the
    first 10 held-out texts, 20 tokens a layer}, the numbers `moelora bounds` must reproduce."""
    encoder, tok = load_encoder(str(tiny))
    encoder.requires_grad_(False)
    task, hidden = vader_task(), int(encoder.config.hidden_size)
    ref: dict[str, Any] = {}
    for arch in archs:
        spec = AdapterSpec(arch="moelora" if arch.startswith("moelora") else arch,
                           targets=("query", "value"), rank=8, experts=4,
                           **({"router": "latent"} if arch == "moelora-latent" else {}))  # fmt: skip
        model = build_classifier(encoder, hidden, spec, seed=0)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in (p for p in model.parameters() if p.requires_grad):
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        model.eval()
        extra = {"base_model": str(tiny), "model_kind": "mean_pool_classifier", "hidden": hidden,
                 "num_labels": 2, "max_length": 16, "threshold": 1.0, "task": task.describe()}  # fmt: skip
        save_adapters(model, run / arch / "adapter", spec, include_trainable_base=True, extra=extra)
        layers = adapted_layers(model)
        texts = [t for t, _ in task.test[:10]]
        X = capture_inputs(model, text_batches(tok, texts, 16), max_tokens=20, layers=layers)
        ref[arch] = measure_model(X, layers, seed=0)
    return ref


def test_bounds_command_reproduces_the_numbers_at_save_time(tmp_path: Path, tiny: Path) -> None:
    run = tmp_path / "run"
    ref = save_classifier_run(run, tiny, ("moelora-latent", "talklora"))
    out = tmp_path / "bounds.json"
    r = CliRunner().invoke(
        app, ["bounds", str(run), "--texts", "10", "--max-tokens", "20", "--json", str(out)]
    )
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    assert set(got) == {"moelora-latent", "talklora"}
    for arch, res in got.items():
        assert res["inputs"] == "VADER task held-out texts"
        saved = ref[arch]
        assert res["layers"].keys() == saved.keys()
        for name, layer in res["layers"].items():
            want = saved[name]
            for key in ("upper_product", "upper_centred", "lower"):
                assert layer["bounds"][key] == pytest.approx(want["bounds"][key], rel=1e-6), (
                    arch,
                    name,
                    key,
                )
            assert layer["routing"]["load"] == pytest.approx(want["routing"]["load"], rel=1e-6)

    one = CliRunner().invoke(
        app, ["bounds", str(run / "talklora"), "--text", "so happy", "--text", "awful"]
    )
    assert one.exit_code == 0, one.output
    assert "given text (2 texts)" in one.output and "‖T‖₂" in one.output
    missing = CliRunner().invoke(app, ["bounds", str(tmp_path / "nothing-here")])
    assert missing.exit_code == 2 and "adapter_config.json" in missing.output


def test_train_then_bounds_on_a_causal_lm(tmp_path: Path) -> None:
    """`moelora train` on a tiny random Llama, then `moelora bounds` on the saved adapter directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = tmp_path / "tiny-llama"
    tok = write_char_tokenizer(model_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"is {w} good?", "output": y}) for w, y in
                              [("cake", "yes"), ("mud", "no"), ("sun", "yes"), ("rain", "no")]) + "\n")  # fmt: skip
    out = tmp_path / "out"
    args = ["train", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--arch", "comol",
            "--rank", "4", "--experts", "2", "--steps", "3", "--batch-size", "2", "--max-length", "256",
            "--warmup", "1", "--mixed-precision", "no"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "3 steps (resumed from 0)" in r.output
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "COMOL"  # a PEFT adapter directory
    info = json.loads((out / "adapter" / "moelora_run.json").read_text())
    assert info["base_model"] == str(model_dir) and info["max_length"] == 256
    again = CliRunner().invoke(app, args)  # resuming a finished run trains nothing
    assert again.exit_code == 0 and "3 steps (resumed from 3)" in again.output

    res_path = tmp_path / "b.json"
    b = CliRunner().invoke(
        app, ["bounds", str(out / "adapter"), "--texts", "6", "--json", str(res_path)]
    )
    assert b.exit_code == 0, b.output
    res = json.loads(res_path.read_text())["out"]
    assert res["inputs"] == "random vocabulary tokens (synthetic)" and res["texts"] == 6
    assert len(res["layers"]) == 4  # q_proj and v_proj of 2 layers
    for layer in res["layers"].values():
        assert layer["bounds"]["lower"] <= layer["bounds"]["upper_centred"]
        assert layer["routing"]["num_experts"] == 2
