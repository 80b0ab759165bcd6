"""TRL's own SFT trains on ``lakeloom export export=messages style=trl`` (issue 16, part 4).

A LLaVA lake (one- and two-image conversations) is exported through the real CLI; the
rows are loaded with ``datasets`` as TRL's docs do (``images`` cast to ``Image()``), and
TRL 1.16's ``SFTTrainer`` with the tiny LLaVA saved by ``save_pretrained`` (a VLM
processor) builds its own ``DataCollatorForVisionLanguageModeling``: the batch holds
``pixel_values``, one image per ``<image>`` placeholder, and one training step runs.
Offline, CPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import jpeg_bytes
from tests.core.conftest import VLM_COLOURS
from tests.core.test_vlm_module import tiny_kwargs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trl_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake of 4 LLaVA conversations (two with 2 images), exported ``style=trl``."""
    from lake.ingest import IngestSettings, ingest
    from lake.store import Lake
    from plugins.llava import LlavaSource

    base = tmp_path_factory.mktemp("trl_export")
    names = list(VLM_COLOURS)
    records = []
    for i in range(4):
        colour, other = names[i], names[(i + 1) % 4]
        (base / f"{i}a.jpg").write_bytes(jpeg_bytes(VLM_COLOURS[colour], (48, 40 + 2 * i)))
        (base / f"{i}b.jpg").write_bytes(jpeg_bytes(VLM_COLOURS[other], (40 + 2 * i, 44)))
        if i % 2:
            images = [f"{i}a.jpg", f"{i}b.jpg"]
            ask, said = "<image>\n<image>\nWhich colours are the shapes?", f"{colour}, {other}."
        else:
            images, ask, said = f"{i}a.jpg", "<image>\nWhich colour is the shape?", f"{colour}."
        turns = [{"from": "human", "value": ask}, {"from": "gpt", "value": f"It is {said}"}]
        records.append({"id": f"r{i}", "image": images, "conversations": turns})
    (base / "data.json").write_text(json.dumps(records))
    lake = Lake(base / "lake")
    report = ingest(
        LlavaSource(base / "data.json"), lake, "trl", IngestSettings(workers=0, progress=False)
    )
    assert report.new_samples == 4 and not report.rejected, report.summary()
    out = base / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = Path(sys.executable).with_name("lakeloom")
    done = subprocess.run(
        [str(cli), "export", "export=messages", "export.style=trl", f"lake.uri={base / 'lake'}",
         f"out={out}", f"runs_dir={base / 'runs'}"],
        cwd=base, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_trl_rows_train_in_trl_sft_trainer_with_pixel_values(
    trl_export: Path, tmp_path: Path
) -> None:
    from datasets import Image, Sequence, load_dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from core.models.vlm_tiny import save_tiny

    rows = [json.loads(x) for x in (trl_export / "messages.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all({"images", "messages"} <= set(r) for r in rows)
    assert sorted(len(r["images"]) for r in rows) == [1, 1, 2, 2]

    data = load_dataset("json", data_files=str(trl_export / "messages.jsonl"), split="train")
    data = data.map(lambda r: {"images": [str(trl_export / p) for p in r["images"]]})
    data = data.cast_column("images", Sequence(Image()))

    ckpt = save_tiny("llava", tiny_kwargs("llava")["tiny"], tmp_path / "tiny", seed=0)
    processor = AutoProcessor.from_pretrained(ckpt)
    model = AutoModelForImageTextToText.from_pretrained(ckpt)
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=4,
        learning_rate=1e-3, bf16=False, use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=1, dataloader_num_workers=0, max_length=None, seed=0,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    collator = trainer.data_collator
    assert isinstance(collator, DataCollatorForVisionLanguageModeling)

    batch = collator([data[i] for i in range(len(data))])
    assert batch["pixel_values"].shape[0] == 6  # every image of the 4 rows
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    per_image = model.config.image_seq_length
    for i, row in enumerate(rows):
        placeholders = sum(1 for m in row["messages"] for p in m["content"] if p["type"] == "image")
        assert placeholders == len(row["images"])
        hit = batch["input_ids"][i] == image_id
        runs = int((hit & ~torch.nn.functional.pad(hit, (1, 0))[:-1]).sum())
        assert runs == placeholders and int(hit.sum()) == per_image * placeholders

    seen: list[torch.Tensor] = []
    tower = model.model.vision_tower
    hook = tower.register_forward_hook(lambda m, a, o: seen.append(a[0] if a else None))
    result = trainer.train()
    hook.remove()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
    assert len(seen) == 1 and seen[0] is not None and seen[0].shape[0] == 6
