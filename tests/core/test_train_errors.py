"""A checkpoint that does not fit the model ends in one line naming the file."""

from __future__ import annotations

from pathlib import Path

import torch

from core.train import checkpoint_problem


def _load_into_smaller_model(path: Path) -> None:
    torch.nn.Linear(2, 3).load_state_dict(torch.load(path, weights_only=True))


def test_shape_mismatch_names_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "big.ckpt"
    torch.save(torch.nn.Linear(2, 4).state_dict(), path)
    try:
        _load_into_smaller_model(path)
    except RuntimeError as exc:
        problem = checkpoint_problem(exc, {"model": {"init_from": "elsewhere.ckpt"}})
    assert problem is not None and problem.path == str(path)
    assert "\n" not in str(problem)
    assert problem.cause.startswith("does not fit the model: size mismatch for weight")
    assert "(and 1 more)" in problem.cause  # weight and bias
    assert checkpoint_problem(ValueError("unrelated"), {}) is None


def test_garbage_checkpoint_falls_back_to_the_configured_file(tmp_path: Path) -> None:
    path = tmp_path / "init.bin"
    path.write_bytes(b"garbage, not a checkpoint")
    try:
        torch.load(str(path), weights_only=True)
    except Exception as exc:  # torch raises pickle or runtime errors
        problem = checkpoint_problem(exc, {"model": {"init_from": str(path)}})
    assert problem is not None and problem.path == str(path)
