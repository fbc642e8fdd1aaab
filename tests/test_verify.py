"""`moelora verify` and `proofs_numeric.variants`: the worked examples' claims (theorems, ci profile),
a refuted mutated twin beside each kind of declaration, the command's exit codes and JSON, and clean
one-line errors for malformed variant files."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import sympy as sp
import torch
from hypothesis import settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from moelora_core.errors import ConfigError
from moelora_core.lora import LoRA, LoRAConfig
from moelora_core.registry import ARCHITECTURES
from moelora_experiments.cli import app
from proofs_numeric.checking import Claim
from proofs_numeric.profiles import using_profile
from proofs_numeric.variants import (
    Variant,
    VariantError,
    bounds_search,
    check_variant_claim,
    complexity,
    embeds,
    empirical_lipschitz,
    format_report,
    lipschitz_bound,
    load_variant,
    load_variants,
    mac_formula,
    param_formula,
    reduces_to,
    run_variant,
    satisfies,
)
from proofs_numeric.variants.search import ascend

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
TRUE_FILE, FALSE_FILE = EXAMPLES / "adamole_variant.py", EXAMPLES / "false_claim_variant.py"
ADAMOLE = load_variant(TRUE_FILE)
MOLA = load_variant(FALSE_FILE)
ada: Any = sys.modules[ADAMOLE.build.__module__]  # type: ignore[attr-defined]
FALSE_CLAIMS = {
    "mola_top2.params_without_router": "num_experts=2",  # the smallest instance where E·n > 0 matters
    "mola_top2.top2_gate_lipschitz": "num_experts=3",  # top-2 of 2 is softmax: E = 3 is the first jump
    "mola_top2.switch_loss_at_least_one": "num_experts=3",  # E = 2: f = (½, ½) and the loss is 1
}
runner = CliRunner()


# ----- the examples, under the active (ci) profile ---------------------------------------------------


@pytest.mark.theorems
@pytest.mark.parametrize("claim", ADAMOLE.claims(), ids=lambda c: c.name)
def test_adamole_example_claims(claim: Claim[Any]) -> None:
    report = check_variant_claim(ADAMOLE, claim)
    assert report.as_expected, "\n".join(format_report(report))
    if claim.expect == "holds" and claim.max_examples is None:
        assert report.cases >= 200  # the ci profile's cases
    if claim.expect == "refuted":
        assert report.counterexample and "num_experts=2" in report.counterexample


@pytest.mark.theorems
@pytest.mark.parametrize("claim", MOLA.claims(), ids=lambda c: c.name)
def test_false_example_claims(claim: Claim[Any]) -> None:
    report = check_variant_claim(MOLA, claim)
    if claim.name not in FALSE_CLAIMS:
        assert report.holds, "\n".join(format_report(report))
        return
    assert not report.holds and not report.as_expected
    assert report.counterexample is not None and report.detail
    shrunk = f"in_features=1, out_features=1, {FALSE_CLAIMS[claim.name]}, expert_rank=1"
    assert shrunk in report.counterexample, report.counterexample
    assert "rebuild:\n    from proofs_numeric.variants import load_variant" in report.counterexample
    if claim.name == "mola_top2.top2_gate_lipschitz":
        assert "g(x) jumps between a and b, so no finite bound holds" in report.detail


# ----- the Lipschitz search ----------------------------------------------------------------------------


def test_lipschitz_search_is_sound_and_tight_on_softmax() -> None:
    """g = softmax([w·x, -w·x]) has Lip = ½‖W‖₂ exactly (attained at w·x = 0): the search must come
    within 2 % and never exceed it."""
    for seed in range(5):
        w = torch.randn(1, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        W = torch.cat([w, -w])  # (2, 4)
        bound = 0.5 * float(torch.linalg.matrix_norm(W, ord=2))
        found = empirical_lipschitz(lambda X, W=W: torch.softmax(X @ W.T, -1), 4, seed=seed)
        assert 0.98 * bound <= found.ratio <= bound * (1 + 1e-9)
        g = lambda X, W=W: torch.softmax(X @ W.T, -1)  # noqa: E731
        direct = float((g(found.a[None]) - g(found.b[None])).norm() / (found.a - found.b).norm())
        assert found.ratio <= direct  # the witness pair really has (at least) that ratio


def test_lipschitz_search_finds_jumps() -> None:
    found = empirical_lipschitz(lambda X: (X[:, :1] > 0.3).to(X.dtype), 2, seed=0)
    assert found.ratio > 1e6


def test_bounds_search_stage_is_sound_and_used_when_thorough() -> None:
    w = torch.randn(1, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    W = torch.cat([w, -w])
    bound = 0.5 * float(torch.linalg.matrix_norm(W, ord=2))
    found = bounds_search(lambda X: torch.softmax(X @ W.T, -1), 3, seed=0)
    assert found is not None and 0.9 * bound <= found.ratio <= bound * (1 + 1e-9)
    half = lipschitz_bound(
        lambda a: ada.half_router_norm(a) / 2, of="probabilities", effort="thorough"
    )
    v = Variant("twin", build=ada.AdaMoLE, shapes=ADAMOLE.shapes, claims=[half])
    (report,) = run_variant(v, max_examples=10).reports
    assert not report.holds
    with pytest.raises(VariantError, match="effort='max'"):
        lipschitz_bound(ada.half_router_norm, effort="max")  # type: ignore[arg-type]


# ----- a refuted mutated twin beside each kind of declaration -----------------------------------------


def _lora_with_extra_A(lora: LoRA) -> Any:
    """Twin: the embedding with A perturbed."""
    out = ada.lora_as_adamole(lora)
    out.A.weight.add_(0.1)
    return out


def _float32_lora(a: Any) -> LoRA:
    """Twin: an embedding built in float32 (values rounded)."""
    return ada.first_expert_as_lora(a).to(torch.float32)


TWINS: list[tuple[str, Any]] = [
    ("reduction without its precondition", reduces_to("lora", embed=ada.first_expert_as_lora)),
    ("embedding in float32", reduces_to("lora", embed=_float32_lora, shapes={"num_experts": 1})),
    ("wrong embedding", embeds("lora", embed=_lora_with_extra_A)),
    ("formula missing n + 1", param_formula("E*r_e*(n + m) + E*n")),
    ("wrong complexity class", complexity("E*r_e*(n + m) + E*n + n + 1", "E*r_e*n", "n m E r_e")),
    ("wrong class of param_formula()", complexity(None, "E*r_e*n", "n m E r_e")),
    ("bound too small by 2", lipschitz_bound(lambda a: ada.half_router_norm(a) / 2, of="probabilities")),
    ("false property", satisfies("gate_is_softmax", lambda a, x: float((a.routing(x) - a.probabilities(x)).abs().max()), tol=1e-9)),
]  # fmt: skip


@pytest.mark.parametrize(("what", "decl"), TWINS, ids=[t[0] for t in TWINS])
def test_each_kind_of_claim_can_be_refuted(what: str, decl: Any) -> None:
    v = Variant("twin", build=ada.AdaMoLE, shapes=ADAMOLE.shapes, claims=[decl])
    (claim,) = v.claims()
    report = check_variant_claim(v, claim, max_examples=60)
    assert not report.holds, f"{what}: held on {report.cases} cases"
    assert report.counterexample is not None and report.detail


def test_true_versions_of_the_twins_hold() -> None:
    decls = [
        complexity(None, "E*r_e*(n + m)", "n m E r_e"),
        param_formula(),  # the adapter's own param_formula()
        lipschitz_bound(ada.half_router_norm, of=lambda a, x: a.probabilities(x)),
    ]
    v = Variant("twin", build=ada.AdaMoLE, shapes=ADAMOLE.shapes, claims=decls)
    for report in run_variant(v, max_examples=20).reports:
        assert report.holds, "\n".join(format_report(report))


def test_own_formulas_are_read_from_the_adapter() -> None:
    """`param_formula()` and `mac_formula()` without a formula use the adapter's own
    `param_formula()` / `macs_formula()`; a variant whose build defines no MAC formula is an error."""
    shapes = {"in_features": (1, 6), "out_features": (1, 6), "rank": (1, 4)}
    v = Variant(
        "own", build=LoRA, config=LoRAConfig, shapes=shapes, claims=[param_formula(), mac_formula()]
    )
    for report in run_variant(v, max_examples=10).reports:
        assert report.holds, "\n".join(format_report(report))

    class NoMacs(LoRA):
        def macs_formula(self) -> sp.Expr:
            raise NotImplementedError("no formula")

    v = Variant("none", build=NoMacs, config=LoRAConfig, shapes=shapes, claims=[mac_formula()])
    (report,) = run_variant(v, max_examples=5).reports
    assert not report.holds and "has no macs_formula() method" in report.raised


def test_claim_declared_refuted_that_holds_is_reported() -> None:
    v = Variant(
        "twin", build=ada.AdaMoLE, shapes=ADAMOLE.shapes, claims=[param_formula(expect="refuted")]
    )
    (report,) = run_variant(v, max_examples=10).reports
    assert report.holds and not report.as_expected and report.line().startswith("BAD")


def test_strategy_configs_and_overrides() -> None:
    """configs= (a strategy) with a per-claim shapes= override applied by dataclasses.replace."""
    configs = st.builds(
        LoRAConfig,
        in_features=st.integers(1, 5),
        out_features=st.integers(1, 5),
        rank=st.integers(1, 3),
    )
    one = lambda a: a  # noqa: E731  (LoRA reduces to itself)
    v = Variant(
        "lora_again",
        build=LoRA,
        configs=configs,
        claims=[
            reduces_to(LoRA, embed=one, shapes={"rank": 7}),
            satisfies("rank_is_seven", lambda a, x: a.config.rank == 7, shapes={"rank": 7}),
            satisfies("rank_small", lambda a, x: a.config.rank <= 3),
        ],
    )
    assert all(r.holds for r in run_variant(v, max_examples=10).reports)


# ----- declaration errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shapes": {"in_features": 2, "out_features": 2, "rnk": 1}}, "not fields of LoRAConfig"),
        ({"shapes": {"in_features": 2, "out_features": 2}}, "required field(s) ['rank']"),
        ({"shapes": {"in_features": (3, 1), "out_features": 2, "rank": 1}}, "expected lo <= hi"),
        ({"shapes": {"in_features": (1, 2, 3), "out_features": 2, "rank": 1}}, "inclusive range"),
        ({}, "give configs="),
        (
            {"shapes": {"in_features": 2, "out_features": 2, "rank": 1}, "claims": []},
            "declares no claims",
        ),
        (
            {"shapes": {"in_features": 2, "out_features": 2, "rank": 1}, "claims": ["x"]},
            "expected declarations",
        ),
    ],
)
def test_bad_declarations_raise_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("claims", [param_formula("r*(n + m)")])
    with pytest.raises(
        VariantError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        Variant("bad", build=LoRA, **kwargs)


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(
        VariantError,
        match=re.escape(f"'molora' is not registered; expected one of {sorted(ARCHITECTURES)}"),
    ):
        reduces_to("molora", embed=lambda a: a)
    with pytest.raises(VariantError, match="not a formula"):
        param_formula("E*(n +")


def test_no_valid_config_is_a_preflight_error() -> None:
    v = Variant("never", build=LoRA, shapes={"in_features": 0, "out_features": 1, "rank": 1},
                claims=[param_formula("r*(n + m)")])  # fmt: skip
    with pytest.raises(
        VariantError,
        match=r"no valid config could be drawn; last rejection: LoRAConfig\(in_features=0",
    ):
        v.preflight()


class _WrongOut(LoRA):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[..., :1]  # drops output features


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda c: 3,
            "build(LoRAConfig(in_features=1, out_features=2, rank=1, scale=1.0)) returned int",
        ),
        (
            _WrongOut,
            "Δ(x) has shape (2, 1) for x of shape (2, 1); expected (2, 2) (the batch axes, then out_features)",
        ),
    ],
)
def test_preflight_names_what_is_wrong(build: Any, message: str) -> None:
    v = Variant("odd", build=build, config=LoRAConfig, claims=[param_formula("r*(n + m)")],
                shapes={"in_features": (1, 3), "out_features": 2, "rank": 1})  # fmt: skip
    with pytest.raises(VariantError, match=re.escape(message)):
        v.preflight()


# ----- the command -----------------------------------------------------------------------------------


def test_cli_true_example_exits_0() -> None:
    result = runner.invoke(
        app, ["verify", str(TRUE_FILE), "--profile", "dev", "--max-examples", "8"]
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(("ok ", "BAD"))]
    assert len(lines) == len(ADAMOLE.declarations) and all(ln.startswith("ok ") for ln in lines)
    assert "(expected refuted)" in result.stdout and "counterexample:" in result.stdout


def test_cli_false_example_exits_1_with_counterexamples_and_json(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.json"
    result = runner.invoke(
        app, ["verify", str(FALSE_FILE), "--max-examples", "30", "--json", str(out)]
    )
    assert result.exit_code == 1, result.stdout + result.stderr
    assert result.stdout.count("counterexample:") == 3 and result.stdout.count("rebuild:") == 3
    assert "2 of 5 claim(s) as declared, 3 not" in result.stdout
    payload = json.loads(out.read_text())
    assert payload["ok"] is False and payload["profile"] == "ci"
    bad = {r["name"] for v in payload["variants"] for r in v["reports"] if not r["as_expected"]}
    assert bad == set(FALSE_CLAIMS)
    assert [p.name for p in out.parent.iterdir()] == [
        "report.json"
    ]  # written atomically, no leftovers


def test_cli_only_and_directory_and_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(
        app,
        ["verify", str(FALSE_FILE), "--only", "balanced_loss_is_one", "--only", "is_top2_moelora"],
    )
    assert result.exit_code == 0 and result.stdout.count("ok ") == 2
    result = runner.invoke(app, ["verify", str(FALSE_FILE), "--only", "nope"])
    assert result.exit_code == 2 and "no claim(s) ['nope']" in result.stderr
    (tmp_path / "tiny_variant.py").write_text(TINY)
    result = runner.invoke(app, ["verify", str(tmp_path), "--max-examples", "5"])  # a directory
    assert result.exit_code == 0 and "variant tiny" in result.stdout
    monkeypatch.syspath_prepend(str(tmp_path))
    result = runner.invoke(
        app, ["verify", "tiny_variant", "--max-examples", "5"]
    )  # a dotted module
    assert result.exit_code == 0 and "variant tiny (tiny_variant)" in result.stdout


TINY = textwrap.dedent(
    """
    from moelora_core.lora import LoRA
    from proofs_numeric.variants import Variant, param_formula

    VARIANT = Variant("tiny", build=LoRA, shapes={"in_features": (1, 3), "out_features": 2, "rank": 1},
                      claims=[param_formula("r*(n + m)")])
    """
)

MALFORMED = {
    "syntax_variant.py": ("VARIANT = (\n", "syntax_variant.py:1: syntax error"),
    "import_variant.py": (
        "import not_a_real_module_xyz\n",
        "import failed: No module named 'not_a_real_module_xyz'",
    ),
    "raises_variant.py": (
        "x = 1 / 0\n",
        "raises_variant.py:1: ZeroDivisionError while loading the variant",
    ),
    "none_variant.py": ("X = 1\n", "no module-level VARIANT = Variant(...) or VARIANTS = [...]"),
    "wrongtype_variant.py": (
        "VARIANT = 3\n",
        "VARIANT(S) holds int; expected proofs_numeric.variants.Variant",
    ),
    "empty_variant.py": (
        TINY.replace('claims=[param_formula("r*(n + m)")]', "claims=[]"),
        "declares no claims",
    ),
    "unknown_variant.py": (
        TINY.replace(
            'param_formula("r*(n + m)")', 'reduces_to("molora", embed=lambda a: a)'
        ).replace("param_formula", "param_formula, reduces_to"),
        f"architecture 'molora' is not registered; expected one of {sorted(ARCHITECTURES)}",
    ),
    "shapes_variant.py": (
        textwrap.dedent(
            """
            from moelora_core.lora import LoRA
            from moelora_core.maps import Compose, Dense
            from proofs_numeric.variants import Variant, param_formula

            class Broken(LoRA):
                def __init__(self, config):
                    super().__init__(config)
                    self.path = Compose(Dense(2, config.rank + 1), self.A)  # inner gives rank, outer wants rank + 1

            VARIANT = Variant("broken", build=Broken, shapes={"in_features": 2, "out_features": 2, "rank": 1},
                              claims=[param_formula("r*(n + m)")])
            """
        ),
        "building or running LoRAConfig(in_features=2, out_features=2, rank=1, scale=1.0) raised ShapeError: "
        "compose: outer.in_features=2 but inner.out_features=1",
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_variant_files_give_one_clear_line(name: str, tmp_path: Path) -> None:
    text, message = MALFORMED[name]
    path = tmp_path / name
    path.write_text(text)
    result = runner.invoke(app, ["verify", str(path)])
    assert result.exit_code == 2
    assert message in result.stderr and str(path) in result.stderr, result.stderr
    assert (
        "Traceback" not in result.stdout + result.stderr
        and len(result.stderr.strip().splitlines()) <= 2
    )


def test_missing_targets(tmp_path: Path) -> None:
    for target, message in [
        (str(tmp_path / "nope.py"), "no such file"),
        ("no_such_module_xyz.sub", "no such file, directory or importable module"),
        (str(tmp_path), "no variant file (named *_variant.py or moelora_variant_*.py)"),
    ]:
        result = runner.invoke(app, ["verify", target])
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    result = runner.invoke(app, ["verify", str(TRUE_FILE), "--profile", "fast"])
    assert result.exit_code == 2 and "--profile='fast'" in result.stderr


def test_counterexample_rebuilds() -> None:
    """The printed rebuild line gives back the same adapter and inputs."""
    (v,) = load_variants(FALSE_FILE)
    cfg = ada.AdaMoLEConfig(2, 1, 2, 1)
    a1, x1 = ADAMOLE.rebuild(cfg, seed=3, input_seed=4, batch=(2,))
    a2, x2 = load_variant(str(TRUE_FILE), "adamole").rebuild(cfg, seed=3, input_seed=4, batch=(2,))
    assert torch.equal(x1, x2) and torch.equal(a1(x1), a2(x2))
    assert v is MOLA and math.isfinite(float(a1(x1).detach().sum()))


# ----- errors are not refutations -------------------------------------------------------------------


def _lora_variant(*claims: Any, **kwargs: Any) -> Variant:
    shapes = kwargs.pop("shapes", {"in_features": (1, 3), "out_features": (1, 3), "rank": (1, 2)})
    return Variant("t", build=kwargs.pop("build", LoRA), config=LoRAConfig, shapes=shapes,
                   claims=list(claims), **kwargs)  # fmt: skip


def _raises(a: Any) -> float:
    raise ZeroDivisionError("boom")


def test_a_raising_bound_is_an_error_even_when_refuted_is_expected() -> None:
    v = _lora_variant(param_formula("r*(n + m)"))
    decl = lipschitz_bound(_raises, of=lambda a, x: a(x), expect="refuted")
    (report,) = run_variant(_lora_variant(decl), max_examples=5).reports
    assert report.verdict == "error" and not report.as_expected and report.line().startswith("ERR")
    assert (
        report.raised.startswith("ZeroDivisionError: boom (") and "test_verify.py:" in report.raised
    )
    assert "Traceback" in report.trace and report.cases == 1
    assert run_variant(v, max_examples=5).ok


def test_undeclared_symbol_and_bad_predicate_are_errors() -> None:
    decls = [
        param_formula("r*(n + m) + K", expect="refuted"),
        satisfies("returns_text", lambda a, x: "yes", expect="refuted"),
    ]
    for report in run_variant(_lora_variant(*decls), max_examples=5).reports:
        assert report.verdict == "error", report.line()
    assert (
        "no value for symbol(s) ['K']"
        in run_variant(_lora_variant(decls[0]), max_examples=5).reports[0].raised
    )


def test_builder_config_errors_are_redrawn_and_other_exceptions_are_errors(tmp_path: Path) -> None:
    def picky(c: LoRAConfig) -> LoRA:
        if c.rank == 2:
            raise ConfigError("rank=2: refused")
        return LoRA(c)

    report = run_variant(_lora_variant(param_formula("r*(n + m)"), build=picky), max_examples=20)
    assert report.ok  # rank-2 configs were redrawn, not counted as refutations
    path = tmp_path / "keyerror_variant.py"
    path.write_text(KEYERROR)
    result = runner.invoke(app, ["verify", str(path)])
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "raised KeyError: 'rank' (" in result.stderr and f"{path}:" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


KEYERROR = textwrap.dedent(
    """
    from dataclasses import dataclass
    from moelora_core.lora import LoRA, LoRAConfig
    from proofs_numeric.variants import Variant, param_formula

    @dataclass(frozen=True)
    class Cfg(LoRAConfig):
        def __post_init__(self):
            if self.rank > 1:
                raise KeyError("rank")

    VARIANT = Variant("k", build=LoRA, config=Cfg, claims=[param_formula("r*(n + m)")],
                      shapes={"in_features": 1, "out_features": 1, "rank": 2})
    """
)


# ----- the adversarial phase ---------------------------------------------------------------------------


@pytest.mark.parametrize("declare", [param_formula, mac_formula])
def test_formula_search_reaches_extreme_sizes(declare: Any) -> None:
    """A formula right on the declared ranges but wrong beyond n = 16 is refuted at x16 / x256 sizes
    (counted on the meta device); the right formula holds there too."""
    decls = declare("r*(n + m)"), declare("r*(Min(n, 16) + m)")
    right, wrong = run_variant(_lora_variant(*decls)).reports
    assert right.holds and right.search_cases > 0
    assert wrong.verdict == "refuted" and wrong.phase == "search"
    text = wrong.counterexample or ""
    assert "meta=True" in text and "in_features=48" in text


def test_ascent_climbs_a_differentiable_margin() -> None:
    rare = load_variant(EXAMPLES / "rare_weights_variant.py")
    cfg = rare.module.MoELoRAConfig(in_features=2, out_features=2, num_experts=4, expert_rank=1)
    a, x = rare.rebuild(cfg, seed=0)
    margin = lambda xv: rare.module.interfere_little(a, xv)  # noqa: E731
    before = float(margin(x).detach())
    assert ascend(a, x, margin, 32) == 32
    assert before < 0 < float(margin(x).detach())  # holds at the random draw, violated after ascent


def test_each_tensor_has_its_own_stream() -> None:
    """Changing n redraws A only: B (m x r) keeps its values, so a witness survives shrinking n."""
    v = _lora_variant(param_formula("r*(n + m)"))
    small, large = (
        v.instance(LoRAConfig(in_features=n, out_features=2, rank=1), 5) for n in (1, 3)
    )
    assert torch.equal(small.B.weight, large.B.weight)
    assert not torch.equal(small.A.weight[:, :1], large.A.weight[:, :1])


def test_cases_count_tried_instances_not_shrinking_runs() -> None:
    (report,) = run_variant(_lora_variant(param_formula("r*n", expect="refuted"))).reports
    assert report.verdict == "refuted" and report.cases == 1


def test_reduction_failure_names_delta_and_routing_with_both_values() -> None:
    (report,) = run_variant(
        Variant("twin", build=ada.AdaMoLE, shapes=ADAMOLE.shapes,
                claims=[reduces_to("moelora", embed=ada.as_input_moelora)]), max_examples=30,
    ).reports  # fmt: skip
    assert report.verdict == "refuted"
    assert re.search(
        r"Δ\(x\): relative error \S+, largest at \[\d+, \d+\]: variant \S+ vs MoELoRA via as_input_moelora \S+",
        report.detail,
    ), report.detail
    assert "routing g(x): relative error" in report.detail


def test_counterexample_snippet_runs_as_pasted(capsys: pytest.CaptureFixture[str]) -> None:
    (report,) = run_variant(MOLA, only=["switch_loss_at_least_one"]).reports
    text = report.counterexample or ""
    snippet = textwrap.dedent(text[text.index("rebuild:") + len("rebuild:") :])
    exec(compile(snippet, "<pasted>", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("Outcome(error=") and f"{report.counterexample_error!r}" in out


# ----- regimes and declarations -----------------------------------------------------------------------


def test_formula_names_are_symbols_not_sympy_constants() -> None:
    with pytest.raises(VariantError, match="imaginary unit I"):
        param_formula(sp.I * sp.Symbol("n"))
    decl = complexity("I*n + n", "n*I", "n I")  # I, a symbol of the formula: Θ holds
    (report,) = run_variant(_lora_variant(decl)).reports
    assert report.holds, report.detail
    with pytest.raises(VariantError, match="expected an inequality"):
        complexity("r", "r", assume="r + n")


def test_complexity_assumptions() -> None:
    holds = complexity("r*n + r**2", "r*n", "r n", assume="r <= n")
    fails = complexity("r*n + r**2", "r*n", "r n")
    reports = run_variant(_lora_variant(holds, fails)).reports
    assert [r.verdict for r in reports] == ["holds", "refuted"]
    assert "assuming r <= n" in reports[0].statement
    with pytest.raises(VariantError, match="state its regime with assume="):
        complexity("r*n", "r*n", where=lambda c: True)


def test_layer_count_and_config_fields_are_formula_symbols() -> None:
    @dataclasses.dataclass(frozen=True)
    class Stacked(LoRAConfig):
        num_layers: int = 1

    class StackedLoRA(LoRA):
        def num_trainable_params(self) -> int:
            return self.config.num_layers * super().num_trainable_params()

    v = Variant("stack", build=StackedLoRA, config=Stacked, claims=[
        param_formula("L*r*(n + m)"), param_formula("num_layers*rank*(in_features + m)")],
        shapes={"in_features": (1, 3), "out_features": 2, "rank": 1, "num_layers": (1, 4)})  # fmt: skip
    assert all(r.holds for r in run_variant(v, max_examples=10).reports)


class _Flattens(LoRA):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).reshape(-1, self.out_features)  # drops the batch axes


def test_preflight_checks_several_batch_shapes() -> None:
    v = Variant("flat", build=_Flattens, config=LoRAConfig, claims=[param_formula("r*(n + m)")],
                shapes={"in_features": 2, "out_features": 2, "rank": 1})  # fmt: skip
    with pytest.raises(
        VariantError, match=re.escape("for x of shape (2, 3, 2); expected (2, 3, 2)")
    ):
        v.preflight()


def test_bounded_region_lipschitz() -> None:
    """x -> ‖x‖² is 2R-Lipschitz on the ball of radius R, and on no larger region."""
    square = lambda a, x: x.square().sum(-1, keepdim=True)  # noqa: E731
    decls = [
        lipschitz_bound(lambda a: 2 * 3.0, of=square, radius=3.0),
        lipschitz_bound(lambda a: 2 * 3.0, of=square),
    ]
    reports = run_variant(_lora_variant(*decls), max_examples=10).reports
    assert [r.verdict for r in reports] == ["holds", "refuted"]
    assert 0.99 < reports[0].max_error <= 1 + 1e-9


def test_slow_claims_never_hit_a_deadline() -> None:
    settings.register_profile("tight_deadline", deadline=1, max_examples=3, database=None)
    slow = satisfies("slow", lambda a, x: time.sleep(0.01) is None, max_examples=3)
    with using_profile("ci"):
        settings.load_profile("tight_deadline")
        (report,) = run_variant(_lora_variant(slow)).reports
    assert report.holds, report.line() + report.raised
