"""Issue 13 (files): replacing checkpoints safely, and one schema for manifests (plus a fuzz suite).

Every malformed manifest, config or safetensors header must end in CheckpointError, never in a
ZeroDivisionError/AttributeError/TypeError/RecursionError, and no tensor may be read from a file
outside the checkpoint or outside the manifest's hashed file list."""

import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _quant_fixtures import tiny_llama, token_ids

from quant.checkpoint import FORMAT, MANIFEST, CheckpointError, load_checkpoint, save_checkpoint
from quant.model_quant import quantize_model


@pytest.fixture(scope="module")
def qm():
    return quantize_model(tiny_llama(hidden=32, layers=1, inter=48), 2, 16, "rtn", calib=token_ids(2, 8),
                          progress=False)


@pytest.fixture(scope="module")
def pristine(qm, tmp_path_factory):
    return save_checkpoint(qm, tmp_path_factory.mktemp("pristine") / "ckpt")


@pytest.fixture
def ckpt(pristine, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(pristine, dst)
    return str(dst)


def _manifest(path):
    with open(os.path.join(path, MANIFEST)) as f:
        return json.load(f)


def _write_manifest(path, man):
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(man, f)


# ----- finding 6: save_checkpoint replaces only lutc checkpoints, atomically -----------------
def test_refuses_to_replace_a_folder_whose_manifest_is_not_a_lutc_checkpoint(qm, tmp_path):
    other = tmp_path / "webapp"
    other.mkdir()
    (other / MANIFEST).write_text(json.dumps({"name": "my-web-app", "icons": []}))
    (other / "important.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a lutc checkpoint"):
        save_checkpoint(qm, other)
    assert (other / "important.txt").read_text() == "keep me"
    (other / MANIFEST).write_text("{broken json")
    with pytest.raises(CheckpointError, match="not a lutc checkpoint"):
        save_checkpoint(qm, other)
    assert (other / "important.txt").read_text() == "keep me"


def test_replacing_never_leaves_the_path_missing(qm, ckpt, monkeypatch):
    """After every rename/rmtree the save makes, `ckpt` is a complete checkpoint (old or new)."""
    real_rename, real_rmtree = os.rename, shutil.rmtree
    seen = []

    def check(what):
        seen.append((what, os.path.isfile(os.path.join(ckpt, MANIFEST))))

    def rename(a, b, *k, **kw):
        real_rename(a, b, *k, **kw)
        check(f"rename {a} -> {b}")

    def rmtree(p, *a, **kw):
        real_rmtree(p, *a, **kw)
        check(f"rmtree {p}")
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    save_checkpoint(qm, ckpt)
    monkeypatch.undo()
    assert all(ok for _, ok in seen), seen
    load_checkpoint(ckpt)
    assert [n for n in os.listdir(os.path.dirname(ckpt)) if n != "ckpt"] == []  # nothing left behind


def test_replace_falls_back_to_renames_without_exchange(qm, ckpt, monkeypatch):
    import quant.checkpoint as C
    monkeypatch.setattr(C, "_exchange", lambda a, b: False)
    save_checkpoint(qm, ckpt)
    load_checkpoint(ckpt)
    assert os.listdir(os.path.dirname(ckpt)) == ["ckpt"]


def test_save_fsyncs_the_parent_directory(qm, ckpt, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    parent_ino = os.stat(os.path.dirname(ckpt)).st_ino
    save_checkpoint(qm, ckpt)                        # replacing
    assert parent_ino in synced
    synced.clear()
    save_checkpoint(qm, os.path.join(os.path.dirname(ckpt), "fresh"))   # creating
    assert parent_ino in synced


# ----- finding 7: one manifest schema -------------------------------------------------------
def _first(man, section):
    return next(iter(man[section]))


def test_tensor_file_outside_the_checkpoint_is_refused(ckpt, tmp_path):
    """A tensor's `file` pointing at a copy outside the folder (not hashed) must not be read."""
    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(os.path.join(ckpt, "model.safetensors"), evil / "model.safetensors")
    for target in ("../evil/model.safetensors", str(evil / "model.safetensors")):
        man = _manifest(ckpt)
        man["tensors"][_first(man, "tensors")]["file"] = target
        _write_manifest(ckpt, man)
        with pytest.raises(CheckpointError, match="not one of the checkpoint's listed"):
            load_checkpoint(ckpt)
        man["linears"][_first(man, "linears")]["file"] = target
        _write_manifest(ckpt, man)
        with pytest.raises(CheckpointError, match="not one of the checkpoint's listed"):
            load_checkpoint(ckpt)


def test_listed_file_that_is_a_symlink_out_of_the_checkpoint_is_refused(ckpt, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.move(os.path.join(ckpt, "model.safetensors"), outside)
    os.symlink(outside, os.path.join(ckpt, "model.safetensors"))
    with pytest.raises(CheckpointError, match="resolves outside the checkpoint"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["linears"][next(iter(m["linears"]))].update(group_size=0), "group_size must be an int >= 1"),
    (lambda m: m.update(linears=[]), "'linears' must be an object"),
    (lambda m: m.update(tensors="x"), "'tensors' must be an object"),
    (lambda m: m.update(files=[]), "'files' is missing or empty"),
    (lambda m: m["linears"][next(iter(m["linears"]))].update(shape=None), r"shape must be \[N, K\]"),
    (lambda m: m["linears"][next(iter(m["linears"]))].update(shape=[4, -8]), r"shape must be \[N, K\]"),
    (lambda m: m["linears"][next(iter(m["linears"]))].update(bits="2"), "bits must be an int in 1..4"),
    (lambda m: m["linears"][next(iter(m["linears"]))].update(bits=True), "bits must be an int in 1..4"),
    (lambda m: m["linears"][next(iter(m["linears"]))].update(group_size=1.5), "group_size must be an int"),
    (lambda m: m["linears"][next(iter(m["linears"]))].update(method=7), "method must be a string or null"),
    (lambda m: m["linears"].update({"x": []}), "bad entry for linear 'x'"),
    (lambda m: m["tensors"][next(iter(m["tensors"]))].update(shape=3), "shape must be a list of ints"),
    (lambda m: m["tensors"][next(iter(m["tensors"]))].update(shape=["a"]), "shape must be a list of ints"),
    (lambda m: m["tensors"][next(iter(m["tensors"]))].pop("file"), "is not one of the checkpoint's listed"),
    (lambda m: m["files"].update({"../x": {"bytes": 1, "sha256": "0" * 64}}), "escapes the checkpoint"),
    (lambda m: m["files"].update({"/etc/passwd": {"bytes": 1, "sha256": "0" * 64}}), "escapes the checkpoint"),
    (lambda m: m["files"].update({"a/./b": {"bytes": 1, "sha256": "0" * 64}}), "escapes the checkpoint"),
    (lambda m: m["files"]["model.safetensors"].update(bytes="12"), r"files\['model.safetensors'\]: expected"),
    (lambda m: m["files"]["model.safetensors"].update(sha256=None), r"files\['model.safetensors'\]: expected"),
    (lambda m: m["files"].update({"config.json": 5}), r"files\['config.json'\]: expected"),
    (lambda m: m["files"].pop("config.json"), "does not list config.json"),
    (lambda m: m.update(meta=[1]), "'meta' must be an object"),
    (lambda m: m.update(format_version=True), "unknown format version"),
])
def test_manifest_schema_violations_are_checkpoint_errors(ckpt, edit, match):
    man = _manifest(ckpt)
    edit(man)
    _write_manifest(ckpt, man)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("text", ["[]", "null", "3", '"x"', "[" * 100_000 + "]" * 100_000,
                                  '{"a":' * 50_000 + "1" + "}" * 50_000])
def test_manifest_that_is_not_an_object_or_too_deep(ckpt, text):
    with open(os.path.join(ckpt, MANIFEST), "w") as f:
        f.write(text)
    with pytest.raises(CheckpointError):
        load_checkpoint(ckpt)


def test_config_that_is_not_an_object(ckpt):
    import hashlib
    cfg = os.path.join(ckpt, "config.json")
    with open(cfg, "w") as f:
        f.write("[1, 2]")
    man = _manifest(ckpt)
    man["files"]["config.json"] = {"bytes": os.path.getsize(cfg),
                                   "sha256": hashlib.sha256(open(cfg, "rb").read()).hexdigest()}
    _write_manifest(ckpt, man)
    with pytest.raises(CheckpointError, match="config.json: expected a JSON object"):
        load_checkpoint(ckpt)


# ----- fuzz: every outcome is CheckpointError or success -------------------------------------
_json = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=12),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)


def _paths(man):
    """Every (container, key) in the manifest, for mutation."""
    out = []

    def walk(o):
        if isinstance(o, dict):
            for k in list(o):
                out.append((o, k))
                walk(o[k])
        elif isinstance(o, list):
            for i in range(len(o)):
                out.append((o, i))
                walk(o[i])
    walk(man)
    return out


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_fuzz_mutated_manifests(pristine, tmp_path, data):
    man = _manifest(pristine)
    for _ in range(data.draw(st.integers(1, 3))):
        spots = _paths(man)
        obj, key = spots[data.draw(st.integers(0, len(spots) - 1))]
        action = data.draw(st.sampled_from(["replace", "delete", "rename"]))
        if action == "replace":
            obj[key] = data.draw(_json)
        elif action == "delete" and isinstance(obj, dict):
            del obj[key]
        elif action == "rename" and isinstance(obj, dict):
            obj[data.draw(st.sampled_from(["../model.safetensors", "/tmp/x", "", "a/../b", "x"]))] = obj.pop(key)
    d = tmp_path / "c"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(pristine, d)
    _write_manifest(d, man)
    try:
        load_checkpoint(d, verify_hashes=data.draw(st.booleans()))
    except CheckpointError:
        pass


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(raw=st.one_of(st.binary(max_size=200), _json.map(lambda v: json.dumps(v).encode())))
def test_fuzz_manifest_bytes(pristine, tmp_path, raw):
    d = tmp_path / "c"
    if not d.exists():
        shutil.copytree(pristine, d)
    (d / MANIFEST).write_bytes(raw)
    with pytest.raises(CheckpointError):
        load_checkpoint(d)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_fuzz_safetensors_header(pristine, tmp_path, data):
    """Corrupt bytes of the safetensors header (sizes kept, hashes not checked): CheckpointError or success."""
    d = tmp_path / "c"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(pristine, d)
    f = d / "model.safetensors"
    blob = bytearray(f.read_bytes())
    hlen = int.from_bytes(blob[:8], "little")
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, 8 + hlen - 1))
        blob[i] = data.draw(st.integers(0, 255))
    f.write_bytes(bytes(blob))
    try:
        load_checkpoint(d, verify_hashes=False)
    except CheckpointError:
        pass


def test_save_then_load_still_round_trips(qm, ckpt):
    back = load_checkpoint(ckpt)
    assert sorted(back.linears) == sorted(qm.linears)
    assert _manifest(ckpt)["format"] == FORMAT
