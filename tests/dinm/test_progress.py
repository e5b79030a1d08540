"""Long work shows progress per step: DINM's bar moves once per optimisation step, generation's per token."""

from __future__ import annotations

from typing import Any

import pytest

from detox_plugins.dinm.editor import DINMEditor

from .helpers import CASE, hparams


class RecordingBar:
    """Stands in for tqdm: records every position the bar is at."""

    made: list["RecordingBar"] = []

    def __init__(self, iterable: Any = None, total: Any = None, desc: str = "", disable: bool = False,
                 **kwargs: Any) -> None:
        self.total, self.desc, self.disable, self.n, self.positions = total, desc, disable, 0, []
        RecordingBar.made.append(self)

    def update(self, count: int = 1) -> None:
        self.n += count
        self.positions.append(self.n)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def refresh(self) -> None:
        self.positions.append(self.n)

    def close(self) -> None:
        pass


@pytest.fixture
def bars(monkeypatch):
    import tqdm.auto

    RecordingBar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    return RecordingBar.made


def test_the_dinm_bar_moves_once_per_step(tok, llama, bars):
    edit = DINMEditor(hparams(num_steps=3, early_stop_loss=0.0), progress=True).edit(llama, tok, [CASE])
    edit.revert()
    (bar,) = [b for b in bars if b.desc == "DINM steps"]
    assert bar.total == 3 and bar.positions == [0, 1, 2, 3]  # the case starts at 0, then one per step


def test_generation_progress_moves_per_token(tok, llama, bars):
    from detox_plugins.evaluation.generate import generate

    generate(llama, tok, ["hi"], max_new_tokens=4, progress=True, use_chat_template=False)
    (bar,) = bars
    assert bar.total == 4 and bar.positions[0] == 1 and bar.n == 4
