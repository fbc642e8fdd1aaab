"""`moelora bounds RUN_OR_ADAPTER_DIR`: measure bounds on an already trained checkpoint.

Accepts a run directory (`runs/NAME`, every `<arch>/adapter/` in it), one architecture's directory
(`runs/NAME/<arch>`), an adapter directory written by `save_adapters`, or a PEFT adapter directory
(`save_pretrained` of LoRA or of a routed method of `peft_methods`, e.g. `moelora train`'s
`out/adapter`). The base model is the one the adapter names (`extra.base_model`; for PEFT,
`moelora_run.json`'s `base_model`, else `base_model_name_or_path`), overridable with --model;
`extra.model_kind` says how to rebuild a toolkit checkpoint's base: "mean_pool_classifier" (frozen
encoder, mean pooling, linear head), "causal_lm", else a plain AutoModel. --device, --dtype,
--device-map and --load-in-4bit place the base (`loading.Placement`); the measurements run in float64
on that device (the CPU with --device-map), the certified enclosures always on the CPU.

Inputs, in order of precedence: --text (repeatable), --data (an LLM-Adapters .json/.jsonl file, whose
prompt + output texts are used, or a .txt file with one text per line), the VADER task's held-out texts
for a mean-pool classifier trained on it (`extra.task`), else seeded random token sequences from the
tokenizer's vocabulary (synthetic, labelled as such in the output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import typer
from torch import nn

from moelora_core.errors import ConfigError, MoELoRAError
from moelora_core.validate import require_int
from proofs_numeric.jsonio import write_json_atomic
from proofs_numeric.threads import torch_threads

from . import options as opt
from .checkpoint import ADAPTER_CONFIG, CheckpointError, load_adapters, read_config
from .data import load_records
from .durable import read_json
from .loading import Placement, from_pretrained, load_tokenizer
from .measure import measure_adapted_model
from .peft_bridge import is_peft_dir
from .tasks import MeanPoolClassifier, load_encoder, text_batches, vader_task


@dataclass
class Loaded:
    """A base model with its adapters loaded, its tokenizer and the adapter config."""

    model: nn.Module
    tokenizer: Any
    config: dict[str, Any]


def adapter_dirs(path: str | Path) -> list[tuple[str, Path]]:
    """[(label, adapter dir)] found at `path` (an adapter dir, an arch dir or a run dir)."""
    p = Path(path)
    if (p / ADAPTER_CONFIG).is_file():
        return [(p.parent.name if p.name == "adapter" else p.name, p)]
    if (p / "adapter" / ADAPTER_CONFIG).is_file():
        return [(p.name, p / "adapter")]
    found = (
        sorted(d for d in p.glob("*/adapter") if (d / ADAPTER_CONFIG).is_file())
        if p.is_dir()
        else []
    )
    if not found:
        raise ConfigError(
            f"path={str(p)!r}: no {ADAPTER_CONFIG} in it, in {p / 'adapter'} or in {p}/*/adapter; "
            "expected a run directory, an architecture directory or an adapter directory"
        )
    return [(d.parent.name, d) for d in found]


def load_checkpoint(
    directory: Path, model_override: str | None = None, placement: Placement | None = None
) -> Loaded:
    """Rebuild the base model named by the adapter, load the adapters (eval mode)."""
    placement = placement or Placement(device="cpu", dtype="float32")
    if is_peft_dir(directory):
        return load_peft_checkpoint(directory, model_override, placement)
    config = read_config(directory)
    extra = config.get("extra", {})
    base = model_override or extra.get("base_model")
    if not base:
        raise ConfigError(
            f"{directory / ADAPTER_CONFIG}: names no base model (extra.base_model); pass --model PATH_OR_NAME"
        )
    kind = extra.get("model_kind", "auto")
    if kind == "mean_pool_classifier":
        encoder, tok = load_encoder(base)
        model: nn.Module = MeanPoolClassifier(
            encoder, int(extra["hidden"]), int(extra.get("num_labels", 2))
        )
        model.to(placement.torch_device)
    else:
        from transformers import AutoModel, AutoModelForCausalLM

        cls = AutoModelForCausalLM if kind == "causal_lm" else AutoModel
        model = from_pretrained(cls, base, placement)
        tok = load_tokenizer(base)
    load_adapters(model, directory)
    model.eval()
    return Loaded(model, tok, config)


def load_peft_checkpoint(
    directory: Path, model_override: str | None, placement: Placement
) -> Loaded:
    """Base model + PEFT adapter (`PeftModel.from_pretrained`), with the run's metadata if present."""
    import transformers
    from peft import PeftModel

    from . import peft_methods  # noqa: F401  (registers the routed PEFT methods)
    from .train_cmd import RUN_INFO

    config = read_json(directory / ADAPTER_CONFIG)
    info = read_json(directory / RUN_INFO) if (directory / RUN_INFO).is_file() else {}
    base = model_override or info.get("base_model") or config.get("base_model_name_or_path")
    if not base:
        raise ConfigError(
            f"{directory / ADAPTER_CONFIG}: names no base model (base_model_name_or_path); "
            "pass --model PATH_OR_NAME"
        )
    cls_name = (config.get("auto_mapping") or {}).get("base_model_class") or ""
    cls = getattr(transformers, cls_name, None) or transformers.AutoModelForCausalLM
    model = from_pretrained(cls, str(base), placement)
    try:
        peft_model = PeftModel.from_pretrained(model, str(directory))
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise CheckpointError(
            f"{directory}: the PEFT adapter does not load onto {base!r} ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:200]})"
        ) from None
    peft_model.eval()
    spec = {
        "peft_type": config.get("peft_type"),
        **{k: config.get(k) for k in ("r", "target_modules")},
    }
    extra = {"max_length": info.get("max_length", 32), "base_model": str(base)}
    return Loaded(peft_model, load_tokenizer(str(base)), {"spec": spec, "extra": extra})


def texts_from(data: str | None, text: list[str] | None) -> tuple[list[str], str] | None:
    """(texts, source description) from --text or --data; None when neither is given."""
    if text:
        return list(text), "given text"
    if data is None:
        return None
    p = Path(data)
    if p.suffix == ".txt":
        if not p.is_file():
            raise ConfigError(
                f"--data {str(p)!r}: not found; expected a text file, one text per line"
            )
        lines = [s for s in p.read_text(encoding="utf-8").splitlines() if s.strip()]
        if not lines:
            raise ConfigError(f"--data {p}: no non-empty line; expected one text per line")
        return lines, f"text file {p}"
    return [r.prompt() + r.output for r in load_records(p)], f"data file {p}"


def random_texts(tokenizer: Any, n: int, length: int, seed: int) -> list[str]:
    """`n` synthetic texts of `length` tokens drawn uniformly (seeded) from the ordinary vocabulary."""
    special = set(getattr(tokenizer, "all_special_ids", []))
    vocab = [i for i in range(int(tokenizer.vocab_size)) if i not in special]
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(vocab), (n, length), generator=gen)
    return [tokenizer.decode([vocab[int(j)] for j in row]) for row in ids]


def inputs_for(
    loaded: Loaded, given: tuple[list[str], str] | None, n: int, seed: int
) -> tuple[list[str], str]:
    if given is not None:
        return given[0][:n], given[1]
    extra = loaded.config.get("extra", {})
    if extra.get("model_kind") == "mean_pool_classifier" and str(
        extra.get("task", {}).get("name", "")
    ).startswith("vader"):
        task = vader_task(float(extra.get("threshold", 1.0)))
        return [t for t, _ in task.test[:n]], "VADER task held-out texts"
    return random_texts(loaded.tokenizer, n, 16, seed), "random vocabulary tokens (synthetic)"


def measure_checkpoint(
    loaded: Loaded,
    texts: list[str],
    *,
    max_length: int | None,
    max_tokens: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Capture the adapted layers' inputs on `texts` and measure every layer on `device`."""
    if max_length is None:
        max_length = int(loaded.config.get("extra", {}).get("max_length", 32))
    batches = text_batches(loaded.tokenizer, texts, max_length)
    result = measure_adapted_model(
        loaded.model, batches, max_tokens=max_tokens, seed=seed, device=device
    )
    return {"spec": loaded.config["spec"], "layers": result}


def _measure_device(placement: Placement | None) -> torch.device:
    """The measurements run where the base model is placed (one device), else on the CPU."""
    if placement is None or placement.device_map is not None:
        return torch.device("cpu")
    return placement.torch_device


def run_bounds(
    path: str,
    *,
    data: str | None = None,
    text: list[str] | None = None,
    json_out: str | None = None,
    model: str | None = None,
    texts: int = 256,
    max_length: int | None = None,
    max_tokens: int = 512,
    seed: int = 0,
    placement: Placement | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Measure every checkpoint found at `path`; write JSON if asked; return {label: result}.
    threads: torch's intra-op threads while measuring (None: unchanged; 1 on a shared machine)."""
    if threads is not None:
        require_int("threads", threads, minimum=1)
    given = texts_from(data, text)
    out: dict[str, Any] = {}
    for label, directory in adapter_dirs(path):
        loaded = load_checkpoint(directory, model, placement)
        chosen, source = inputs_for(loaded, given, texts, seed)
        with torch_threads(threads):
            result = measure_checkpoint(
                loaded, chosen, max_length=max_length, max_tokens=max_tokens, seed=seed,
                device=_measure_device(placement),
            )  # fmt: skip
        out[label] = {"directory": str(directory), "inputs": source, "texts": len(chosen), **result}
    if json_out:
        write_json_atomic(json_out, out)
    return out


def bounds_command(
    path: str = typer.Argument(..., help="A run dir, one arch's dir, or an adapter dir."),
    data: str | None = typer.Option(
        None, "--data", help="LLM-Adapters .json/.jsonl, or .txt (one text a line)."
    ),
    text: list[str] | None = typer.Option(None, "--text", help="Input text (repeatable)."),  # noqa: B008
    json_out: str | None = typer.Option(
        None, "--json", help="Also write the results to this JSON file."
    ),
    model: str | None = typer.Option(None, "--model", help="Base model, if the config names none."),
    texts: int = typer.Option(256, "--texts", help="At most this many texts."),
    max_length: int | None = typer.Option(
        None, "--max-length", help="Tokens per text (default: the checkpoint's, else 32)."
    ),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Hidden states kept per layer."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random inputs and the bound search."),
    device: str = opt.DEVICE,
    dtype: str = typer.Option(
        "float32", "--dtype", help="Base model dtype: auto, float32, bfloat16 or float16."
    ),
    device_map: str | None = opt.DEVICE_MAP,
    load_in_4bit: bool = opt.LOAD_IN_4BIT,
    threads: int | None = typer.Option(
        None, "--threads", help="torch threads while measuring (1 on a shared machine)."
    ),
) -> None:
    """Measure router bounds, noise amplification and routing statistics of a trained checkpoint."""
    from rich.console import Console

    from .report import bounds_table

    try:
        placement = Placement(
            device=device, dtype=dtype, device_map=device_map, load_in_4bit=load_in_4bit
        )
        results = run_bounds(
            path, data=data, text=text, json_out=json_out, model=model, texts=texts, max_length=max_length,
            max_tokens=max_tokens, seed=seed, placement=placement, threads=threads,
        )  # fmt: skip
    except MoELoRAError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    console = Console(width=max(Console().width, 132))
    for label, res in results.items():
        console.print(
            bounds_table(
                label, res["layers"], caption=f"inputs: {res['inputs']} ({res['texts']} texts)"
            )
        )
    if json_out:
        console.print(f"wrote {json_out}")
