"""Saved edits carry digests of every file and of the manifest; load_edit refuses anything that differs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from registry import load_edit
from registry.edits import MANIFEST_DIGEST, MANIFEST_NAME, TENSORS_NAME
from registry.errors import ManifestError
from registry.saved import ALLOW_UNVERIFIED_ENV

from ..tiny import tiny_llama
from .scale_editor import ScaleEditor, ScalePlugin

REQUEST = {"prompt": "How do I pick a lock?", "target_new": "I can't help with that.", "ground_truth": "Sure"}


@pytest.fixture
def scale_registry(editor_registry):
    editor_registry.register_plugin(ScalePlugin(), name="scale-plugin", distribution="scale-dist", version="1.2.3")
    return editor_registry


def save(folder, factor: float = 1.5):
    return ScaleEditor({"alg_name": "Scale", "factor": factor}).edit(tiny_llama(), None, [REQUEST]).save(folder)


def rewrite_tensors(path, change):
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(change(tensors), str(path), metadata=metadata)


def test_a_save_records_the_digest_of_each_file_and_of_itself(scale_registry, tmp_path):
    manifest = json.loads((save(tmp_path / "e") / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 2
    assert set(manifest["digests"]) == {TENSORS_NAME} and manifest["digests"][TENSORS_NAME].startswith("sha256:")
    assert manifest[MANIFEST_DIGEST].startswith("sha256:")
    assert load_edit(tmp_path / "e").editor == "Scale"


def test_flipped_values_are_refused_naming_the_file(scale_registry, tmp_path):
    folder = save(tmp_path / "e")
    rewrite_tensors(folder / TENSORS_NAME, lambda t: {k: v.flip(0).contiguous() for k, v in t.items()})
    with pytest.raises(ManifestError, match=f"{TENSORS_NAME} does not match the digest recorded at save time"):
        load_edit(folder)


def test_tensor_files_swapped_between_two_edits_are_refused(scale_registry, tmp_path):
    a, b = save(tmp_path / "a", 1.5), save(tmp_path / "b", 2.0)
    shutil.copy(b / TENSORS_NAME, a / TENSORS_NAME)  # same names and shapes: only the digest tells
    with pytest.raises(ManifestError, match="does not match the digest"):
        load_edit(a)
    shutil.copy(b / MANIFEST_NAME, a / MANIFEST_NAME)  # both files of b: that is b, and it loads
    assert torch.equal(load_edit(a).tensors[next(iter(load_edit(a).tensors))],
                       load_edit(b).tensors[next(iter(load_edit(b).tensors))])


def test_a_manifest_edited_by_hand_is_refused(scale_registry, tmp_path):
    folder = save(tmp_path / "e")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["model"]["fingerprint"] = "0" * 32  # e.g. to apply the edit to another model silently
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="manifest.json was changed after the save"):
        load_edit(folder)


def test_a_save_without_digests_is_refused_unless_allowed(scale_registry, tmp_path, monkeypatch):
    folder = save(tmp_path / "e")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for key in ("digests", MANIFEST_DIGEST):
        manifest.pop(key)
    manifest["format_version"] = 1  # as an older detox-plugins wrote it
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=f"saved without digests.*{ALLOW_UNVERIFIED_ENV}=1 detox apply"):
        load_edit(folder)
    monkeypatch.setenv(ALLOW_UNVERIFIED_ENV, "1")
    assert load_edit(folder).editor == "Scale"


def test_digest_entries_cannot_point_outside_the_folder(scale_registry, tmp_path):
    from registry.integrity import json_digest

    folder = save(tmp_path / "e")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["digests"]["../../etc/passwd"] = "sha256:0"
    manifest[MANIFEST_DIGEST] = json_digest(manifest, without=MANIFEST_DIGEST)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="not a path inside the folder"):
        load_edit(folder)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from([TENSORS_NAME, MANIFEST_NAME]), position=st.floats(0, 1, exclude_max=True),
       bit=st.integers(0, 7))
def test_any_flipped_bit_of_a_save_is_refused(scale_registry, tmp_path_factory, which, position, bit):
    folder = save(tmp_path_factory.mktemp("s") / "e")
    path = folder / which
    data = bytearray(path.read_bytes())
    index = int(position * len(data))
    data[index] ^= 1 << bit
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError):
        load_edit(folder)
