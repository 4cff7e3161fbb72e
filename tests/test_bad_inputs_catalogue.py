"""A catalogue of bad inputs and file handling, as a Keras 3 user meets them: each gets a Python
exception of the type Keras raises that names the problem (and the fix), and leaves the model, the
saved files and the exported predictors as they were."""
import builtins
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

import kcompile
from kcompile import cli, saving
from kcompile.layers import Dense, Input
from kcompile.models import Sequential, load_model
from kcompile.predictor import PredictorError

TARGET = "reference"


def small(units=3, optimizer="adam"):
    model = Sequential([Input((4,)), Dense(units, activation="softmax")])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", target=TARGET)
    return model


def trained(units=3):
    model = small(units)
    rng = np.random.default_rng(0)
    model.fit(rng.random((16, 4), dtype=np.float32), rng.integers(0, units, 16), epochs=1,
              batch_size=8, verbose=0)
    return model


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


def assert_same_weights(model, before):
    after = model.get_weights()
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# -- loading from a path that is not a readable file -------------------------------------------

def test_load_model_of_a_directory_is_a_value_error_naming_it(tmp_path):
    # Keras 3 raises a ValueError ("File not found ... an accessible `.keras` zip file"); open()
    # raised a bare IsADirectoryError without saying what to pass
    directory = tmp_path / "model.keras"
    directory.mkdir()
    with pytest.raises(ValueError, match=r"model\.keras: it is a directory, not a file") as info:
        load_model(str(directory))
    assert isinstance(info.value, IsADirectoryError)      # what open() raised before, still caught


def test_load_weights_of_a_directory_is_a_value_error_and_changes_nothing(tmp_path):
    model = trained()
    before = weights_of(model)
    for name in ("w.weights.h5", "m.keras"):
        (tmp_path / name).mkdir()
        with pytest.raises(ValueError, match="it is a directory"):
            model.load_weights(str(tmp_path / name))
        assert_same_weights(model, before)


def test_an_unreadable_model_file_is_a_value_error_saying_so(tmp_path, monkeypatch):
    # (simulated: the tests may run as root, who reads any file)
    path = tmp_path / "m.keras"
    trained().save(str(path))
    real_open = builtins.open

    def refusing_open(file, mode="r", *args, **kwargs):
        if os.fspath(file) == str(path) and "r" in mode:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(ValueError, match=r"m\.keras: it may not be read .*chmod u\+r") as info:
        load_model(str(path))
    assert isinstance(info.value, PermissionError)


# -- weights that the model's float32 weights cannot hold ---------------------------------------

@pytest.mark.parametrize("value, dtype", [(1e300, np.float64), (-1e39, np.float64)])
def test_weights_beyond_float32_are_refused_and_nothing_is_loaded(tmp_path, value, dtype):
    # before: loaded as inf (a numpy RuntimeWarning at most), and every prediction NaN
    source = trained()
    source.save_weights(str(tmp_path / "w.weights.h5"))
    arrays = dict(np.load(str(tmp_path / "w.weights.h5")))
    arrays["dense/kernel"] = arrays["dense/kernel"].astype(dtype)
    arrays["dense/kernel"][1, 2] = value
    np.savez(str(tmp_path / "bad.weights.npz"), **arrays)

    model = trained()
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"'dense/kernel' holds 1 value\(s\) that float32 cannot "
                                         "hold") as info:
        model.load_weights(str(tmp_path / "bad.weights.npz"))
    assert "nothing was loaded" in str(info.value) and repr(value) in str(info.value)
    assert_same_weights(model, before)
    # the file's finite float64 values that float32 holds load as float32 (Keras casts them too)
    arrays["dense/kernel"][1, 2] = 0.5
    np.savez(str(tmp_path / "ok.weights.npz"), **arrays)
    model.load_weights(str(tmp_path / "ok.weights.npz"))
    np.testing.assert_array_equal(model.get_weights()[0], arrays["dense/kernel"].astype(np.float32))


def test_a_model_file_whose_weights_overflow_float32_does_not_load(tmp_path):
    import io
    import zipfile
    path = tmp_path / "m.keras"
    trained().save(str(path))
    with zipfile.ZipFile(str(path)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    arrays = dict(np.load(io.BytesIO(members["weights.npz"])))
    arrays["dense/bias"] = np.array([0.0, 1e300, 0.0])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    members["weights.npz"] = buffer.getvalue()
    with zipfile.ZipFile(str(path), "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match=r"'dense/bias' holds 1 value\(s\) that float32 cannot hold"):
        load_model(str(path))


# -- the CLI's -o ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["inspect", "dot"])
def test_cli_output_that_is_the_model_file_is_refused_and_the_model_survives(tmp_path, capsys,
                                                                             command):
    # before: `kcompile dot m.keras -o m.keras` replaced the saved model by the DOT text
    path = str(tmp_path / "m.keras")
    trained().save(path)
    before = digest(path)
    link = str(tmp_path / "link.keras")
    os.symlink(path, link)
    for output in (path, link):
        assert cli.main([command, path, "-o", output]) == 2
        err = capsys.readouterr().err
        assert "is the model file itself" in err and "pass another file name" in err
        assert digest(path) == before
    load_model(path)


def test_cli_output_in_a_missing_directory_or_on_a_directory_says_so(tmp_path, capsys):
    path = str(tmp_path / "m.keras")
    trained().save(path)
    assert cli.main(["dot", path, "-o", str(tmp_path / "no" / "such" / "g.dot")]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
    assert cli.main(["dot", path, "-o", str(tmp_path)]) == 2
    assert "is an existing directory; pass a file path" in capsys.readouterr().err
    assert cli.main(["stages", str(tmp_path)]) == 2
    assert "File format not supported" in capsys.readouterr().err


def test_cli_output_replaces_an_earlier_output_whole_and_keeps_it_on_failure(tmp_path, capsys,
                                                                          monkeypatch):
    path = str(tmp_path / "m.keras")
    trained().save(path)
    output = tmp_path / "g.dot"
    output.write_text("earlier output\n")
    assert cli.main(["dot", path, "-o", str(output)]) == 0
    text = output.read_text()
    assert text.startswith("digraph")
    # a write that fails midway (a full disk) leaves the earlier output as it was

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    assert cli.main(["dot", path, "-o", str(output)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert output.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot", "m.keras"]


# -- exported predictors: a manifest that is not one ----------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("export") / "predictor")
    model = trained()
    model.export(directory)
    return directory, model


def _edited_copy(exported, tmp_path, text):
    directory = str(tmp_path / "copy")
    shutil.copytree(exported[0], directory)
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        f.write(text)
    return directory


def test_a_manifest_with_an_infinite_size_is_a_predictor_error(exported, tmp_path):
    # JSON's 1e400 reads as infinity; int() of it raised a bare OverflowError
    with open(os.path.join(exported[0], "manifest.json")) as f:
        manifest = json.load(f)
    manifest["input_shape"] = [None, "INFINITE"]
    directory = _edited_copy(exported, tmp_path, json.dumps(manifest).replace('"INFINITE"', "1e400"))
    with pytest.raises(PredictorError, match=r"manifest\.json is missing or has a bad field: cannot "
                                             "convert float infinity"):
        kcompile.load_predictor(directory)


def test_a_manifest_nested_too_deeply_is_a_predictor_error(exported, tmp_path):
    # json raised a RecursionError (a RuntimeError), which the CLI and callers did not expect
    directory = _edited_copy(exported, tmp_path, "[" * 100000 + "]" * 100000)
    with pytest.raises(PredictorError, match=r"manifest\.json is corrupt: RecursionError"):
        kcompile.load_predictor(directory)
    # and an export over it refuses to treat the directory as an earlier export
    with pytest.raises(ValueError, match="not an earlier export"):
        exported[1].export(directory)
    with open(os.path.join(directory, "manifest.json")) as f:
        assert f.read(3) == "[[["


def test_optimizer_slots_beyond_float32_are_not_loaded(tmp_path):
    # before: an Adam moment of 1e300 in the file became inf in the optimizer, and the next step NaN
    source = trained()
    source.save_weights(str(tmp_path / "w.weights.h5"))
    arrays = dict(np.load(str(tmp_path / "w.weights.h5")))
    key = "optimizer:dense/kernel/m"
    arrays[key] = arrays[key].astype(np.float64)
    arrays[key][0, 0] = 1e300
    np.savez(str(tmp_path / "bad.weights.npz"), **arrays)

    model = trained()
    state = [np.array(v.numpy()) for v in model.optimizer.variables]
    # as Keras 3 does with an optimizer state that does not fit: the weights load, the state is
    # skipped with a warning that says why
    with pytest.warns(UserWarning, match=r"slot 'dense/kernel/m' holds 1 value\(s\) that float32 "
                                         r"cannot hold, such as 1e\+300.*not loaded"):
        model.load_weights(str(tmp_path / "bad.weights.npz"))
    assert_same_weights(model, [arrays["dense/kernel"], arrays["dense/bias"]])
    after = [np.array(v.numpy()) for v in model.optimizer.variables]
    assert len(after) == len(state)
    for a, b in zip(after, state):
        np.testing.assert_array_equal(a, b)


def test_cli_on_a_model_it_cannot_rebuild_says_how_to_export_it_from_python(tmp_path, capsys):
    # the command line cannot pass custom objects nor safe_mode=False: the error says what can
    from kcompile.layers import Lambda
    model = Sequential([Input((4,)), Lambda(lambda v: v * 2.0), Dense(2)])
    model.compile(optimizer="sgd", loss="mse", target=TARGET)
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    output = tmp_path / "out"
    assert cli.main(["export", path, "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Lambda" in err and "safe_mode=False" in err
    assert "loads models with no custom objects and in safe mode" in err
    assert "model.export(directory)" in err
    assert not output.exists()
    # and that way works
    loaded = load_model(path, safe_mode=False)
    loaded.export(str(output))
    x = np.random.default_rng(1).random((3, 4), dtype=np.float32)
    np.testing.assert_allclose(kcompile.load_predictor(str(output)).predict(x),
                               model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_an_export_that_runs_out_of_disk_names_the_export_and_keeps_the_earlier_one(
        exported, tmp_path, monkeypatch):
    import codegen.export
    directory = str(tmp_path / "again")
    shutil.copytree(exported[0], directory)
    before = {name: digest(os.path.join(directory, name)) for name in os.listdir(directory)}
    real_write = codegen.export._write

    def full_disk(path, data):
        if path.endswith(".h"):
            raise OSError(28, "No space left on device", path)
        real_write(path, data)

    monkeypatch.setattr(codegen.export, "_write", full_disk)
    with pytest.raises(OSError, match=f"cannot export to {directory}: No space left on device "
                                      r"\(.*model\.h") as info:
        exported[1].export(directory)
    assert info.value.errno == 28
    assert {name: digest(os.path.join(directory, name)) for name in os.listdir(directory)} == before
    # a new directory it created is gone again
    with pytest.raises(OSError, match="cannot export to .*No space left on device"):
        exported[1].export(str(tmp_path / "new" / "dir"))
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    x = np.random.default_rng(2).random((3, 4), dtype=np.float32)
    np.testing.assert_allclose(kcompile.load_predictor(directory).predict(x),
                               exported[1].predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_a_save_whose_rename_fails_names_the_users_file_and_keeps_the_old_one(tmp_path,
                                                                               monkeypatch):
    import errno
    model = trained()
    # a name longer than the file system takes: the message named the temporary file before
    with pytest.raises(OSError, match=r"Cannot save to .*aaaa\.keras: File name too long; nothing "
                                      "was written") as info:
        model.save(str(tmp_path / ("a" * 300 + ".keras")))
    assert info.value.errno == errno.ENAMETOOLONG and ".kcompile-" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    # over an existing file: the old one survives the failed rename, whole
    path = str(tmp_path / "m.keras")
    small().save(path)
    before = digest(path)

    def failing_replace(source, destination):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match=r"m\.keras: Input/output error; nothing was written"):
        model.save(path)
    with pytest.raises(OSError, match=r"w\.weights\.h5: Input/output error"):
        model.save_weights(str(tmp_path / "w.weights.h5"))
    monkeypatch.undo()
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]
    load_model(path)


def test_write_idx_of_a_dimension_beyond_the_header_is_a_value_error(tmp_path):
    from kcompile.datasets import _idx
    # (a zero-size array: no memory, but a dimension the 4-byte header field cannot hold; before:
    # struct.error "'I' format requires 0 <= number <= 4294967295")
    array = np.zeros((2 ** 32, 0), np.uint8)
    with pytest.raises(ValueError, match=r"dimensions below 2\*\*32.*\(4294967296, 0\)"):
        _idx.write_idx(str(tmp_path / "x.idx"), array)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", ["1", 1.5, None])
def test_a_seed_that_is_not_an_integer_is_the_value_error_keras_raises(seed):
    # Keras 3: ValueError "Expected `seed` argument to be an integer"; kcompile raised a TypeError
    # only, which `except ValueError` (written against Keras) did not catch
    from kcompile.utils import set_random_seed
    from kcompile.utils import random as kcompile_random
    set_random_seed(5)
    expected = kcompile_random.get_generator().bit_generator.state
    with pytest.raises(ValueError, match="Expected `seed` to be an integer") as info:
        set_random_seed(seed)
    assert isinstance(info.value, TypeError)
    assert kcompile_random.get_generator().bit_generator.state == expected   # not reseeded
