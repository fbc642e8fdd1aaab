"""`moelora params`: the counted total equals the closed form, per architecture, on meta models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from moelora_experiments.cli import app

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
TINY = CONFIGS / "tiny-llama.json"
LLAMA3_8B = CONFIGS / "llama3-8b.json"
TARGETS = "q_proj,k_proj,v_proj,o_proj,down_proj"
# tiny-llama.json: hidden 32, intermediate 48, 4 heads of 8, 2 KV heads, 2 layers
TINY_SHAPES = {
    "q_proj": (32, 32),
    "k_proj": (32, 16),
    "v_proj": (32, 16),
    "o_proj": (32, 32),
    "down_proj": (48, 32),
}
TINY_LAYERS = 2


def closed_form(arch: str, n: int, m: int, r: int, E: int, opts: dict[str, Any]) -> tuple[int, int]:
    """(per-layer parameters, parameters shared once per module type), the formulas of the SPEC."""
    re_ = opts.get("expert_rank") or r // E
    if arch == "lora":
        return r * (n + m), 0
    if arch == "moelora":
        router = E * (E * re_) if opts.get("router") == "latent" else E * n
        return E * re_ * (n + m) + router, 0
    if arch == "hydralora":
        return re_ * n + E * re_ * m + E * n, 0
    if arch == "talklora":
        per_layer = r * n + r * r // E + E * E + E * r
        return (per_layer, r * m) if opts.get("shared_b") else (per_layer + r * m, 0)
    if arch == "comol":
        router = E * r if opts.get("core_router", True) else E * n
        ab = r * (n + m)
        return (E * r * r + router, ab) if opts.get("shared_ab") else (ab + E * r * r + router, 0)
    raise AssertionError(arch)


def run(*args: str) -> Any:
    result = CliRunner().invoke(app, ["params", *args])
    assert result.exit_code == 0, result.output
    return result


def run_json(config: Path, arch: str, r: int, E: int, *extra: str) -> dict[str, Any]:
    out = run(
        "--config",
        str(config),
        "--arch",
        arch,
        "--rank",
        str(r),
        "--experts",
        str(E),
        "--targets",
        TARGETS,
        "--json",
        *extra,
    )
    parsed = json.loads(out.stdout)  # exactly one JSON object on stdout
    assert isinstance(parsed, dict)
    return parsed


CASES = [
    ("lora", {}),
    ("moelora", {}),
    ("moelora", {"router": "latent"}),
    ("moelora", {"expert_rank": 3}),
    ("hydralora", {}),
    ("talklora", {}),
    ("talklora", {"shared_b": True}),
    ("comol", {}),
    ("comol", {"core_router": False}),
    ("comol", {"shared_ab": True}),
]


def flags(opts: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if "router" in opts:
        out += ["--router", opts["router"]]
    if "expert_rank" in opts:
        out += ["--expert-rank", str(opts["expert_rank"])]
    if opts.get("shared_b"):
        out.append("--shared-b")
    if opts.get("shared_ab"):
        out.append("--shared-ab")
    if opts.get("core_router") is False:
        out.append("--no-core-router")
    return out


@pytest.mark.parametrize(
    ("arch", "opts"), CASES, ids=[f"{a}-{'-'.join(map(str, o.values()))}" for a, o in CASES]
)
def test_json_total_equals_closed_form(arch: str, opts: dict[str, Any]) -> None:
    r, E = 8, 4
    res = run_json(TINY, arch, r, E, *flags(opts))
    assert res["total_trainable"] == res["formula_total"] == res["adapter_trainable"]
    assert res["formula_agrees"] is True
    expected_per_type = {}
    for t, (n, m) in TINY_SHAPES.items():
        per_layer, shared = closed_form(arch, n, m, r, E, opts)
        expected_per_type[t] = TINY_LAYERS * per_layer + shared
    assert res["per_type"] == expected_per_type == res["formula_per_type"]
    assert res["total_trainable"] == sum(expected_per_type.values())
    assert 0 < res["share_percent"] < 100 and res["base_params"] > 0
    assert res["memory_bytes"]["total"] == 12 * res["total_trainable"]


def test_talklora_shared_b_counted_once_per_type() -> None:
    shared = run_json(TINY, "talklora", 8, 4, "--shared-b")
    unshared = run_json(TINY, "talklora", 8, 4)
    # mutated twin: B counted in every layer is the unshared total, not the shared one
    saved = sum((TINY_LAYERS - 1) * 8 * m for _, m in TINY_SHAPES.values())
    assert unshared["total_trainable"] - shared["total_trainable"] == saved > 0


def test_table_output_and_errors() -> None:
    out = run(
        "--config",
        str(TINY),
        "--arch",
        "comol",
        "--rank",
        "8",
        "--experts",
        "4",
        "--targets",
        "q_proj,v_proj",
    )
    assert "q_proj" in out.stdout and "total" in out.stdout and "closed form" in out.stdout
    bad = CliRunner().invoke(app, ["params", "--config", str(TINY), "--arch", "dora"])
    assert bad.exit_code == 2 and "arch='dora': expected one of" in bad.output
    none = CliRunner().invoke(app, ["params", "--config", str(TINY), "--targets", "query"])
    assert none.exit_code == 2 and "q_proj" in none.output  # lists the available layers
    missing = CliRunner().invoke(app, ["params", "--config", str(CONFIGS / "nope.json")])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_llama3_8b_on_meta() -> None:
    res = run_json(LLAMA3_8B, "comol", 16, 8)
    assert res["base_params"] == 8_030_261_248  # Llama-3-8B
    shapes = {
        "q_proj": (4096, 4096),
        "k_proj": (4096, 1024),
        "v_proj": (4096, 1024),
        "o_proj": (4096, 4096),
        "down_proj": (14336, 4096),
    }
    assert res["shapes"] == {t: list(s) for t, s in shapes.items()}
    assert res["total_trainable"] == sum(
        32 * closed_form("comol", n, m, 16, 8, {})[0] for n, m in shapes.values()
    )


# ----- the config-only path (known model types, no torch) against the meta model ----------------------
def _without_seconds(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "seconds"}


@pytest.mark.parametrize(
    ("arch", "opts"), CASES, ids=[f"{a}-{'-'.join(map(str, o.values()))}" for a, o in CASES]
)
def test_config_path_equals_meta_model(arch: str, opts: dict[str, Any]) -> None:
    fast = run_json(TINY, arch, 8, 4, *flags(opts), "--targets", TARGETS + ",gate_proj,up_proj")
    meta = run_json(
        TINY, arch, 8, 4, *flags(opts), "--targets", TARGETS + ",gate_proj,up_proj", "--meta"
    )
    assert _without_seconds(fast) == _without_seconds(meta)


@pytest.mark.parametrize(
    "extra", [{}, {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}]
)
@pytest.mark.parametrize("model_type", ["llama", "mistral"])
def test_config_path_model_types(tmp_path: Path, model_type: str, extra: dict[str, Any]) -> None:
    cfg = json.loads(TINY.read_text())
    cfg.update({"model_type": model_type, "architectures": None, **extra})
    if model_type == "mistral":
        cfg = {k: v for k, v in cfg.items() if k not in ("attention_bias", "mlp_bias")}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    fast = run_json(tmp_path, "moelora", 8, 4, "--top-k", "2")
    meta = run_json(tmp_path, "moelora", 8, 4, "--top-k", "2", "--meta")
    assert _without_seconds(fast) == _without_seconds(meta)


def test_config_path_llama3_8b_and_unknown_falls_back() -> None:
    fast = run_json(LLAMA3_8B, "talklora", 16, 8, "--shared-b")
    meta = run_json(LLAMA3_8B, "talklora", 16, 8, "--shared-b", "--meta")
    assert _without_seconds(fast) == _without_seconds(meta)
    bad = CliRunner().invoke(
        app, ["params", "--config", str(TINY), "--arch", "talklora", "--rank", "6"]
    )
    assert bad.exit_code == 2 and "rank=6" in bad.output  # the meta path's error (6 % 4 != 0)


def test_params_known_type_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; from moelora_experiments.cli import app; "
        f"r = CliRunner().invoke(app, ['params', '--config', {str(LLAMA3_8B)!r}, '--json']); "
        "assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _without_time(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "seconds"}


def test_shared_is_the_generic_spelling_of_shared_b_and_shared_ab() -> None:
    for arch, alias in (("talklora", "--shared-b"), ("comol", "--shared-ab")):
        generic = run_json(TINY, arch, 8, 4, "--shared")
        assert _without_time(generic) == _without_time(run_json(TINY, arch, 8, 4, alias))
        assert generic["spec"]["shared"] is True
    bad = CliRunner().invoke(app, ["params", "--config", str(TINY), "--arch", "lora", "--shared"])
    assert bad.exit_code == 2 and "shared=True" in bad.output


def test_options_go_through_the_architecture() -> None:
    res = run_json(TINY, "talklora", 8, 4, "--option", "talk_init=identity")
    assert res["spec"]["options"] == {"talk_init": "identity"} and res["formula_agrees"]
    assert res["total_trainable"] == run_json(TINY, "talklora", 8, 4)["total_trainable"]
    for bad, message in (("talk_init", "key=value"), ("nope=1", "nope")):
        r = CliRunner().invoke(
            app, ["params", "--config", str(TINY), "--arch", "talklora", "--option", bad]
        )
        assert r.exit_code == 2 and message in r.output, r.output
