"""Tests that drive the real EasyEdit (github.com/zjunlp/EasyEdit main, the snapshot in
../shared/hosts/EasyEdit-14cea82 unless $EASYEDIT_PATH says otherwise). They run only in .venv-hosts
(scripts/setup_hosts.sh; `make test` runs them there): EasyEdit needs transformers==5.5.4. Nothing
here skips: a missing host is an error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT.parent / "shared" / "hosts" / "EasyEdit-14cea82"
os.environ.setdefault("EASYEDIT_PATH", str(SNAPSHOT))


@pytest.fixture(scope="session")
def easyeditor() -> Any:
    import easyedit_host

    return easyedit_host.import_easyeditor()


@pytest.fixture
def alg_dict(easyeditor, real_registry) -> Iterator[dict]:
    """EasyEdit's own ALG_DICT (the object its editors look algorithms up in), with our editors
    installed explicitly (overwrite=True for DINM) and put back as it was afterwards."""
    from easyeditor.util.alg_dict import ALG_DICT

    from registry import easyedit

    saved = dict(ALG_DICT)
    easyedit.install(ALG_DICT)
    easyedit.install(ALG_DICT, overwrite=True, names=["DINM"])
    try:
        yield ALG_DICT
    finally:
        ALG_DICT.clear()
        ALG_DICT.update(saved)


def fingerprint(model: Any) -> str:
    from registry.fingerprint import model_fingerprint

    return model_fingerprint(model)


def hook_count(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def easyedit_dinm_hparams(easyeditor: Any, tmp_path: Path, model: Any, tok: Any, **changes: Any) -> Any:
    """EasyEdit's own DINMHyperParams, read by its from_hparams from an EasyEdit-format YAML (the keys of
    our shipped DINM/smollm2-135m.yaml that EasyEdit's class has), with the preloaded (model, tokenizer)."""
    import dataclasses

    import yaml
    from easyeditor import DINMHyperParams

    ours = yaml.safe_load((ROOT / "hparams" / "DINM" / "smollm2-135m.yaml").read_text())
    names = {f.name for f in dataclasses.fields(DINMHyperParams)}
    config = {k: v for k, v in ours.items() if k in names}
    config.update(changes)
    path = tmp_path / "dinm.yaml"
    path.write_text(yaml.safe_dump(config))
    hp = DINMHyperParams.from_hparams(str(path))
    # SafetyEditor loads its own models with output_hidden_states=True and locates the layer from
    # them; a preloaded model has to be set up the same way.
    model.config.output_hidden_states = True
    hp.model_name = (model, tok)
    return hp
