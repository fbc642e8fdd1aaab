"""Write what the offline GPU run carries (< 64 MiB): a float16 copy of the packaged MiniLM with its
tokenizer, and the study's tasks as one JSON file (the GPU image has no vaderSentiment / nrclex).

    .venv/bin/python -m moelora_experiments.gpu.prepare --out runs/gpu-assets [--preset gpu]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def prepare(out: Path, preset_name: str = "gpu", model: str | None = None) -> Path:
    import torch
    from transformers import PreTrainedModel

    from ..study.data import export_tasks
    from ..study.grid import preset
    from ..tasks import load_encoder

    cfg = preset(preset_name)
    encoder, tokenizer = load_encoder(model or cfg.model)
    encoder.to(dtype=torch.float16)
    assert isinstance(encoder, PreTrainedModel)  # what AutoModel.from_pretrained returns
    encoder.save_pretrained(out / "minilm")
    tokenizer.save_pretrained(out / "minilm")
    export_tasks(out / "tasks.json", ("vader", "multi"), cfg.per_task)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/gpu-assets")
    p.add_argument("--preset", default="gpu")
    p.add_argument("--model", default=None, help="encoder directory (default: the preset's model)")
    a = p.parse_args(argv)
    out = prepare(Path(a.out), a.preset, a.model)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
