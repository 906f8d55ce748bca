"""convex_attention.paper.models.checkpoint: checkpoints hold plain data only, load without running code,
and refuse damage and other architectures."""
import os

import numpy as np
import pytest
import torch
from helpers import tiny_checkpoint

from convex_attention.paper.models import (
    AttentionUNet,
    load_checkpoint,
    load_model,
    read_checkpoint,
    save_checkpoint,
)

SMALL = dict(in_channels=4, width=4, image_size=32, embed_channels=8)


def test_checkpoint_round_trip_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = AttentionUNet(method="learned_dual", **SMALL).eval()
    opt = torch.optim.Adam(model.parameters())
    images = torch.randn(3, 4, 32, 32)
    path = save_checkpoint(str(tmp_path / "m.pt"), model, opt, epoch=3, metrics=[{"epoch": 3}])
    loaded, state = load_model(path)
    loaded.eval()
    assert state["epoch"] == 3
    torch.testing.assert_close(loaded(images).logits, model(images).logits, atol=0, rtol=0)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = save_checkpoint(str(tmp_path / "m.pt"), AttentionUNet(method="exact", **SMALL))
    other = AttentionUNet(method="exact", **{**SMALL, "width": 8})
    with pytest.raises(ValueError, match="another architecture.*width"):
        load_checkpoint(path, other)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a convex-attention checkpoint"):
        load_model(str(tmp_path / "junk.pt"))
    torch.save({"weights": 1}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a convex-attention checkpoint"):
        load_model(str(tmp_path / "plain.pt"))
    with pytest.raises(ValueError, match="does not exist"):
        load_model(str(tmp_path / "missing.pt"))


def test_checkpoints_load_without_running_code_and_refuse_damage(tmp_path):
    model = AttentionUNet(method="exact", norm="group", **SMALL)
    path = save_checkpoint(str(tmp_path / "m.pt"), model, extra={"train_config": {"epochs": 2}})
    state = torch.load(path, weights_only=True)  # only tensors and plain containers inside
    assert state["config"]["norm"] == "group" and state["config"]["attention_blocks"] == [3, 4]
    loaded, _ = load_model(path)
    assert loaded.config == model.config
    (tmp_path / "legacy.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="not a convex-attention checkpoint"):
        load_model(str(tmp_path / "legacy.pt"))
    # weights of another configuration than the one stored
    other = AttentionUNet(method="exact", **SMALL).state_dict()
    torch.save({**state, "model": other}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="weights do not fit its own configuration"):
        load_model(str(tmp_path / "mixed.pt"))


def test_a_damaged_checkpoint_is_refused_clearly(tmp_path):
    good = read_checkpoint(tiny_checkpoint(tmp_path / "a" / "last.pt"))
    for damage, words in (({"model": {"w": "text"}}, "no weights"), ({"epoch": -1}, "epoch"),
                          ({"config": {**good["config"], "width": 0}}, "invalid model configuration"),
                          ({"config": {**good["config"], "depth": 3}}, "invalid model configuration"),
                          ({"metrics": "x"}, "metrics")):
        torch.save({**good, **damage}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=words):
            load_model(str(tmp_path / "bad.pt"))



# (torch 2.14 warns that it validates a loaded sparse tensor, the one this test plants: its own note, not ours)
@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants:UserWarning")
@pytest.mark.parametrize("kind", ["meta", "sparse", "optimizer_meta"])
def test_a_checkpoint_with_a_tensor_without_values_is_refused_in_one_line(tmp_path, kind):
    """Before: a meta or sparse tensor in a checkpoint crashed the finiteness check with a raw
    RuntimeError / NotImplementedError (a traceback) instead of the module's ValueError."""
    good = read_checkpoint(tiny_checkpoint(tmp_path / "a" / "last.pt"))
    first = next(iter(good["model"]))
    odd = {"meta": torch.empty(3, device="meta"), "sparse": torch.tensor([[0.0, float("nan")]]).to_sparse(),
           "optimizer_meta": torch.empty(2, device="meta")}[kind]
    if kind == "optimizer_meta":
        damage = {"optimizer": {"state": {0: {"exp_avg": odd}}, "param_groups": []}}
        where = "optimizer['state'][0]['exp_avg']"
    else:
        damage = {"model": {**good["model"], first: odd}}
        where = f"model[{first!r}]"
    torch.save({**good, **damage}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="damaged convex-attention checkpoint") as err:
        read_checkpoint(str(tmp_path / "odd.pt"))
    assert where in str(err.value) and ("meta tensor" in str(err.value) or "not a dense one" in str(err.value))
    assert "\n" not in str(err.value)

def test_checkpoints_hold_only_plain_data(tmp_path):
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    path = save_checkpoint(str(tmp_path / "m.pt"), model, extra={"score": np.float64(0.5), "n": np.int64(3)})
    state = torch.load(path, weights_only=True)  # loads without any allowed extra global
    assert type(state["score"]) is float and type(state["n"]) is int
    with pytest.raises(TypeError, match="plain containers"):
        save_checkpoint(str(tmp_path / "x.pt"), model, extra={"obj": object()})
    assert not os.path.exists(tmp_path / "x.pt") and not os.path.exists(tmp_path / "x.pt.tmp")


def _with_weights(tmp_path, name, edit):
    """A checkpoint whose weights ``edit(state_dict)`` changed (saved as plain tensors)."""
    model = AttentionUNet(method="exact", **SMALL)
    state = read_checkpoint(save_checkpoint(str(tmp_path / "good.pt"), model))
    weights = {k: v.clone() for k, v in state["model"].items()}
    edit(weights)
    torch.save({**state, "model": weights}, tmp_path / name)
    return str(tmp_path / name)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_checkpoint_whose_weights_are_not_all_finite_is_refused_at_load(tmp_path, value):
    """Before: explain scored a model whose weights were all NaN and reported plausible metrics."""
    from convex_attention.paper.models import NonFiniteWeights, load_any_model

    first = next(k for k, v in AttentionUNet(method="exact", **SMALL).state_dict().items() if v.is_floating_point())

    def poison(weights):
        weights[first].view(-1)[:3] = value

    path = _with_weights(tmp_path, "poisoned.pt", poison)
    for load in (read_checkpoint, load_model, load_any_model):
        with pytest.raises(NonFiniteWeights, match=rf"not all finite: {first} \(3 of \d+ values NaN or Inf\).*"
                                                   rf"diverged") as err:
            load(path)
        assert "\n" not in str(err.value)


def test_a_buffer_that_is_not_finite_is_refused_too(tmp_path):
    from convex_attention.paper.models import NonFiniteWeights

    model = AttentionUNet(method="exact", **SMALL)
    buffer = next(k for k, v in model.state_dict().items() if "running_var" in k)
    path = _with_weights(tmp_path, "buffer.pt", lambda w: w[buffer].fill_(float("nan")))
    with pytest.raises(NonFiniteWeights, match=buffer):
        load_model(path)


def test_model_from_state_refuses_weights_of_other_shapes_and_other_kinds(tmp_path):
    from convex_attention.paper.models import PlainCNN, model_from_state

    key = next(k for k, v in AttentionUNet(method="exact", **SMALL).state_dict().items() if v.dim() == 4)
    path = _with_weights(tmp_path, "shapes.pt", lambda w: w.__setitem__(key, torch.zeros(1, 1, 1, 1)))
    with pytest.raises(ValueError, match="weights do not fit its own configuration"):
        model_from_state(path, read_checkpoint(path))
    plain = save_checkpoint(str(tmp_path / "plain.pt"), PlainCNN(width=4, image_size=32, in_channels=4))
    with pytest.raises(ValueError, match="checkpoint of a plain CNN, not of an attention model"):
        model_from_state(plain, read_checkpoint(plain))


def test_saving_a_checkpoint_touches_no_file_of_the_users(tmp_path):
    """Before: the temporary file was PATH.tmp, so a user's file of that name was
    overwritten and then deleted."""
    (tmp_path / "m.pt.tmp").write_text("the user's notes")
    save_checkpoint(str(tmp_path / "m.pt"), AttentionUNet(method="exact", **SMALL))
    assert (tmp_path / "m.pt.tmp").read_text() == "the user's notes"
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "m.pt.tmp"]


# ----------------------------------------------------------------------------- more refusals and guarantees

def _saved(tmp_path, name="m.pt", **kwargs):
    return save_checkpoint(str(tmp_path / name), AttentionUNet(method="exact", **SMALL), **kwargs)


def test_plain_data_is_checked_inside_lists_too(tmp_path):
    """Numpy scalars anywhere (a metrics row) become Python numbers; a numpy array or an object
    anywhere is refused before a file is written."""
    path = _saved(tmp_path, metrics=[{"epoch": 1, "val_auc": np.float64(0.75)}], extra={"seen": [np.int64(2)]})
    state = torch.load(path, weights_only=True)
    assert type(state["metrics"][0]["val_auc"]) is float and type(state["seen"][0]) is int
    for bad in ({"metrics": [{"note": object()}]}, {"extra": {"scores": np.zeros(1)}},
                {"extra": {"scores": [np.zeros(2)]}}):
        with pytest.raises(TypeError, match="plain containers"):
            _saved(tmp_path, "x.pt", **bad)
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = _saved(tmp_path, epoch=1)
    before = (tmp_path / "m.pt").read_bytes()
    real_fsync = os.fsync

    def disk_full(fd):  # the new file written, then flushing it to the disk fails
        assert any(name != "m.pt" for name in os.listdir(tmp_path))  # written beside, under another name
        real_fsync(fd)
        raise OSError("no space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="no space left"):
        _saved(tmp_path, epoch=2)
    monkeypatch.undo()
    assert (tmp_path / "m.pt").read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"] and read_checkpoint(path)["epoch"] == 1


def test_a_wrapped_model_is_saved_as_the_model_it_wraps(tmp_path):
    model = AttentionUNet(method="exact", **SMALL)
    path = save_checkpoint(str(tmp_path / "m.pt"), torch.nn.DataParallel(model))
    loaded, state = load_model(path)
    assert list(state["model"]) == list(model.state_dict()) and loaded.config == model.config


def test_read_checkpoint_takes_path_objects_and_refuses_what_is_not_a_file(tmp_path):
    path = _saved(tmp_path)
    assert read_checkpoint(tmp_path / "m.pt")["format"] == read_checkpoint(path)["format"]
    with pytest.raises(ValueError, match="does not exist"):
        read_checkpoint(None)
    with pytest.raises(ValueError, match="is not a file"):
        read_checkpoint(str(tmp_path))


def test_the_file_type_is_checked_before_anything_is_unpickled(tmp_path, monkeypatch):
    good = read_checkpoint(_saved(tmp_path))
    torch.save(good, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # a bare pickle stream
    real_load, loads = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    for name in ("legacy.pt", "text.pt"):
        (tmp_path / "text.pt").write_text("weights = [1, 2]\n")
        with pytest.raises(ValueError, match="not a convex-attention checkpoint") as err:
            read_checkpoint(str(tmp_path / name))
        assert "\n" not in str(err.value)
    assert loads == []


class _Planted:
    """Unpickling it would create the folder ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_planted_object_is_refused_in_one_line_and_never_runs(tmp_path):
    good = read_checkpoint(_saved(tmp_path))
    marker = tmp_path / "PWNED"
    torch.save({**good, "train_config": {"epochs": _Planted(marker)}}, tmp_path / "planted.pt")
    with pytest.raises(ValueError, match="refused to load it") as err:
        read_checkpoint(str(tmp_path / "planted.pt"))
    assert "\n" not in str(err.value) and not marker.exists()
    assert "unsupported GLOBAL posix.mkdir" in str(err.value)  # what was refused, not torch's notice
    torch.load(tmp_path / "planted.pt", weights_only=False)  # the file is live: an unsafe load runs the call
    assert marker.exists()


def test_more_damage_is_refused_naming_every_problem(tmp_path):
    good = read_checkpoint(_saved(tmp_path))
    first = next(iter(good["model"]))
    for damage, words in (([1, 2], "not a convex-attention checkpoint"),
                          ({**good, "model": {**good["model"], 7: good["model"][first]}}, "no weights"),
                          ({**good, "epoch": True}, "epoch True"),
                          ({**good, "metrics": [{"epoch": 1}, 3]}, "metrics are not a list of rows"),
                          ({**good, "train_config": ["epochs", 2]}, "train_config is not a dict"),
                          ({k: v for k, v in good.items() if k != "config"}, "no model configuration"),
                          ({k: v for k, v in good.items() if k != "epoch"}, "epoch None"),
                          ({**good, "epoch": -2, "metrics": "x"}, "epoch -2 .*; metrics are not"),
                          ({**good, "config": {**good["config"], "image_size": 40}}, "invalid model configuration"),
                          ({**good, "config": {**good["config"], "attention_blocks": [2, 4]}},
                           "invalid model configuration")):
        torch.save(damage, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=words) as err:
            read_checkpoint(str(tmp_path / "bad.pt"))
        assert "\n" not in str(err.value)


def test_a_checkpoint_of_weights_alone_reads_its_missing_entries_as_none(tmp_path):
    """As read_checkpoint documents: metrics, optimizer and train_config may be missing (a
    file holding only a model's weights, for scoring); config, model and epoch may not."""
    good = read_checkpoint(_saved(tmp_path))
    bare = {k: good[k] for k in ("format", "config", "model", "epoch")}
    torch.save(bare, tmp_path / "bare.pt")
    state = read_checkpoint(str(tmp_path / "bare.pt"))
    assert set(state) == set(bare) and load_model(str(tmp_path / "bare.pt")) is not None
    for required in ("config", "model", "epoch"):
        torch.save({k: v for k, v in bare.items() if k != required}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match="damaged convex-attention checkpoint"):
            read_checkpoint(str(tmp_path / "bad.pt"))


def test_a_tensor_without_values_is_found_inside_lists_too(tmp_path):
    path = _saved(tmp_path, epoch=1, metrics=[{"epoch": 1, "loss": torch.empty(1, device="meta")}])
    with pytest.raises(ValueError, match=r"metrics\[0\]\['loss'\] is a meta tensor"):
        read_checkpoint(path)


def test_a_single_value_that_is_not_finite_is_refused_even_in_a_complex_tensor(tmp_path):
    from convex_attention.paper.models import NonFiniteWeights

    weights = AttentionUNet(method="exact", **SMALL).state_dict()
    first = next(k for k, v in weights.items() if v.is_floating_point())

    def one_nan(weights):
        weights[first].view(-1)[-1] = float("nan")

    def complex_inf(weights):
        weights[first] = weights[first].to(torch.complex64)
        weights[first].view(-1)[0] = complex(0.0, float("inf"))

    with pytest.raises(ValueError, match=rf"{first} \(1 of {weights[first].numel()} values") as err:
        read_checkpoint(_with_weights(tmp_path, "bad.pt", one_nan))
    assert isinstance(err.value, NonFiniteWeights)
    # a complex weight is refused as such, before its values are read (ca_rev173: loaded, it dropped its
    # imaginary part with a warning)
    with pytest.raises(ValueError, match=rf"weight '{first}' is complex"):
        read_checkpoint(_with_weights(tmp_path, "bad.pt", complex_inf))


def test_another_architecture_names_the_checkpoint_s_value_and_the_model_s(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(ValueError, match="width: checkpoint 4 vs model 8"):
        load_checkpoint(path, AttentionUNet(method="exact", **{**SMALL, "width": 8}))


def _stepped(model):
    """An Adam optimiser of ``model`` after one step (it has state)."""
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4, 32, 32)).logits.sum().backward()
    opt.step()
    return opt


def test_the_optimiser_state_is_saved_and_restored(tmp_path):
    torch.manual_seed(0)
    model = AttentionUNet(method="exact", norm="group", **SMALL)
    opt = _stepped(model)
    path = save_checkpoint(str(tmp_path / "m.pt"), model, opt, epoch=1)
    again = AttentionUNet(method="exact", norm="group", **SMALL)
    fresh = torch.optim.Adam(again.parameters())
    load_checkpoint(path, again, fresh)
    saved, restored = opt.state_dict()["state"], fresh.state_dict()["state"]
    assert saved.keys() == restored.keys() and len(saved) > 0
    for i in saved:
        torch.testing.assert_close(restored[i]["exp_avg"], saved[i]["exp_avg"], atol=0, rtol=0)
    # a checkpoint without an optimiser leaves the one given as it is
    bare = _saved(tmp_path, "bare.pt")
    untouched = torch.optim.Adam(AttentionUNet(method="exact", **SMALL).parameters())
    load_checkpoint(bare, AttentionUNet(method="exact", **SMALL), untouched)
    assert untouched.state_dict()["state"] == {}


def test_an_optimiser_state_that_does_not_fit_is_refused_in_one_line(tmp_path):
    state = read_checkpoint(_saved(tmp_path))
    for optimizer, message in (({"state": {}}, "damaged .* optimizer is not an optimiser's state"),
                               ({"state": {}, "param_groups": []}, "optimiser state does not fit this Adam")):
        torch.save({**state, "optimizer": optimizer}, tmp_path / "bad.pt")
        model = AttentionUNet(method="exact", **SMALL)
        with pytest.raises(ValueError, match=message) as err:
            load_checkpoint(str(tmp_path / "bad.pt"), model, torch.optim.Adam(model.parameters()))
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["text", "list", "state_list"])
def test_a_tampered_optimiser_entry_is_refused_with_a_value_error(tmp_path, kind):
    model = AttentionUNet(method="exact", **SMALL)
    state = read_checkpoint(save_checkpoint(str(tmp_path / "m.pt"), model, torch.optim.Adam(model.parameters())))
    optimizer = {"text": "junk", "list": [],
                 "state_list": {"state": [], "param_groups": state["optimizer"]["param_groups"]}}[kind]
    torch.save({**state, "optimizer": optimizer}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(str(tmp_path / "bad.pt"), model, torch.optim.Adam(model.parameters()))


def test_each_loader_refuses_the_other_kind(tmp_path):
    from convex_attention.paper.models import PlainCNN, load_any_model, load_plain_cnn

    attention = _saved(tmp_path, "att.pt")
    plain = save_checkpoint(str(tmp_path / "plain.pt"), PlainCNN(width=4, image_size=32, in_channels=4))
    with pytest.raises(ValueError, match="checkpoint of an attention model, not of a plain CNN"):
        load_plain_cnn(attention)
    with pytest.raises(ValueError, match="checkpoint of a plain CNN, not of an attention model"):
        load_model(plain)
    assert isinstance(load_plain_cnn(plain)[0], PlainCNN) and isinstance(load_any_model(plain)[0], PlainCNN)
    assert isinstance(load_any_model(attention)[0], AttentionUNet)


def test_a_checkpoint_reaches_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda *a, **k: events.append("replace") or real_replace(*a, **k))
    _saved(tmp_path)
    assert "fsync" in events and events.index("fsync") < events.index("replace")


@pytest.mark.parametrize("where", ["model", "top"])
def test_a_refusal_stays_one_line_whatever_the_file_s_keys_hold(tmp_path, where):
    good = read_checkpoint(_saved(tmp_path))
    key = "conv.weight\nall weights are finite"
    if where == "model":
        damaged = {**good, "model": {**good["model"], key: torch.tensor([float("nan")])}}
    else:
        damaged = {**good, key: torch.empty(1, device="meta")}
    torch.save(damaged, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        read_checkpoint(str(tmp_path / "bad.pt"))
    assert "\n" not in str(err.value)


def test_weights_that_do_not_fit_are_refused_in_one_line(tmp_path):
    key = next(k for k, v in AttentionUNet(method="exact", **SMALL).state_dict().items() if v.dim() == 4)
    path = _with_weights(tmp_path, "shapes.pt", lambda w: w.__setitem__(key, torch.zeros(1, 1, 1, 1)))
    with pytest.raises(ValueError, match="weights do not fit its own configuration") as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_the_loaders_read_the_file_with_the_map_location_given(tmp_path):
    from convex_attention.paper.models import load_any_model

    path, locations = _saved(tmp_path), []

    def keep_on_cpu(storage, location):
        locations.append(location)
        return storage

    for load in (load_model, load_any_model):
        locations.clear()
        load(path, map_location=keep_on_cpu)
        assert locations and set(locations) == {"cpu"}


def test_solver_options_the_method_does_not_take_are_refused_with_a_value_error(tmp_path):
    good = read_checkpoint(_saved(tmp_path))
    torch.save({**good, "config": {**good["config"], "solver_options": {"no_such_option": 1}}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_model(str(tmp_path / "bad.pt"))


def test_extra_entries_never_replace_a_checkpoints_own(tmp_path):
    from convex_attention.paper.models.checkpoint import CORE_ENTRIES

    model = AttentionUNet(method="exact", **SMALL)
    for entry in CORE_ENTRIES:
        with pytest.raises(ValueError, match=rf"extra may not replace a checkpoint's own entries \['{entry}'\]"):
            save_checkpoint(str(tmp_path / "m.pt"), model, extra={entry: 1, "train_config": {}})
    assert not (tmp_path / "m.pt").exists()
    assert read_checkpoint(save_checkpoint(str(tmp_path / "m.pt"), model, extra={"note": "kept"}))["note"] == "kept"


def test_an_unpickler_refusal_quotes_its_reason_not_torchs_notice(tmp_path):
    # a valid archive whose data.pkl appends to a dict: refused by torch's unpickler, whose
    # message puts the reason after "WeightsUnpickler error:", below its notice (hostile review)
    import zipfile

    source, crafted = _saved(tmp_path), str(tmp_path / "crafted.pt")
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(crafted, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            zout.writestr(item, b"\x80\x02}K\x01a." if item.filename.endswith("data.pkl") else zin.read(item))
    with pytest.raises(ValueError, match=r"refused to load it \(Can only append to lists") as err:
        read_checkpoint(crafted)
    assert "\n" not in str(err.value) and "PyTorch 2.6" not in str(err.value)


def test_a_plain_cnn_checkpoint_with_solver_options_it_ignores_loads(tmp_path):
    # the experiment trained its plain CNN with the compared methods' options, which PlainCNN
    # ignores: such a checkpoint is valid (hostile review: refusing it broke older files)
    from convex_attention.paper.models import PlainCNN, load_plain_cnn

    path = save_checkpoint(str(tmp_path / "plain.pt"), PlainCNN(width=4, image_size=32, in_channels=4))
    state = read_checkpoint(path)
    torch.save({**state, "config": {**state["config"], "solver_options": {"tol": 1e-6}}}, tmp_path / "opts.pt")
    model, _ = load_plain_cnn(str(tmp_path / "opts.pt"))
    assert isinstance(model, PlainCNN)


# ----------------------------------------------------------------------------- found by mutation testing

def test_an_epoch_given_as_a_number_of_another_type_is_stored_as_an_integer(tmp_path):
    # save_checkpoint never writes a file that read_checkpoint refuses: an epoch counted in a
    # numpy integer or a 0-d tensor is stored as a Python int
    for epoch in (np.int64(2), torch.tensor(2)):
        state = read_checkpoint(_saved(tmp_path, epoch=epoch))
        assert type(state["epoch"]) is int and state["epoch"] == 2


@pytest.mark.parametrize("optimizer", [{"state": [], "param_groups": []}, {"state": {}, "param_groups": [3]}])
def test_an_optimiser_entry_of_the_wrong_structure_is_damage_found_on_reading(tmp_path, optimizer):
    # read_checkpoint checks the structure: 'state' a dict, 'param_groups' a list of dicts
    good = read_checkpoint(_saved(tmp_path))
    torch.save({**good, "optimizer": optimizer}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="damaged convex-attention checkpoint: optimizer is not an optimiser's state"):
        read_checkpoint(str(tmp_path / "bad.pt"))


def test_a_configuration_that_is_not_a_dict_is_damage(tmp_path):
    good = read_checkpoint(_saved(tmp_path))
    for config in ("width=4", [["width", 4]]):
        torch.save({**good, "config": config}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match="damaged convex-attention checkpoint: no model configuration"):
            read_checkpoint(str(tmp_path / "bad.pt"))


def test_many_tensors_without_values_are_named_three_at_a_time(tmp_path):
    good = read_checkpoint(_saved(tmp_path))
    names = list(good["model"])[:5]
    torch.save({**good, "model": {**good["model"], **{k: torch.empty(1, device="meta") for k in names}}},
               tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        read_checkpoint(str(tmp_path / "bad.pt"))
    message = str(err.value)
    assert all(f"model[{k!r}] is a meta tensor" in message for k in names[:3]) and repr(names[3]) not in message
    assert f"and {len(names) - 3} more;" in message


def test_many_tensors_that_are_not_finite_are_named_three_at_a_time(tmp_path):
    from convex_attention.paper.models import NonFiniteWeights

    names = [k for k, v in AttentionUNet(method="exact", **SMALL).state_dict().items() if v.is_floating_point()][:5]

    def poison(weights):
        for k in names:
            weights[k].view(-1)[0] = float("nan")

    with pytest.raises(NonFiniteWeights) as err:
        read_checkpoint(_with_weights(tmp_path, "bad.pt", poison))
    message = str(err.value)
    assert all(f"{k} (1 of" in message for k in names[:3]) and f"{names[3]} (" not in message
    assert f"and {len(names) - 3} more tensor(s);" in message


def test_a_checkpoint_already_read_is_not_read_again(tmp_path):
    """load_checkpoint and model_from_state use the state given (the file is read once)."""
    from convex_attention.paper.models import model_from_state

    path = _saved(tmp_path)
    state = read_checkpoint(path)
    gone = str(tmp_path / "moved.pt")  # the file named in messages need not exist any more
    assert load_checkpoint(gone, AttentionUNet(method="exact", **SMALL), state=state) is state
    assert isinstance(model_from_state(gone, state), AttentionUNet)


def test_an_optimiser_group_without_its_parameters_is_refused_with_a_value_error(tmp_path):
    model = AttentionUNet(method="exact", **SMALL)
    state = read_checkpoint(_saved(tmp_path))
    torch.save({**state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt'?: its optimiser state does not fit this Adam optimiser") as err:
        load_checkpoint(str(tmp_path / "bad.pt"), model, torch.optim.Adam(model.parameters()))
    assert "\n" not in str(err.value)


def test_solver_options_of_values_the_method_refuses_are_an_invalid_configuration(tmp_path):
    good = read_checkpoint(_saved(tmp_path))
    config = {**good["config"], "method": "dual", "solver_options": {"tol": -1.0}}
    torch.save({**good, "config": config}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt'? holds an invalid model configuration: .*tol") as err:
        load_model(str(tmp_path / "bad.pt"))
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- review 34

def test_rev34_an_optimiser_state_of_other_shapes_is_refused_when_loaded(tmp_path):
    import torch

    from convex_attention.paper.models import AttentionUNet, ModelConfig, load_checkpoint, save_checkpoint

    config = ModelConfig(image_size=32, width=4, embed_channels=8)
    model = AttentionUNet(config=config)
    opt = torch.optim.Adam(model.parameters())
    first = next(iter(model.parameters()))
    opt.state[first] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(1), "exp_avg_sq": torch.ones(1)}
    path = save_checkpoint(str(tmp_path / "last.pt"), model, opt, epoch=1)
    fresh = AttentionUNet(config=config)
    with pytest.raises(ValueError, match="optimi"):
        load_checkpoint(path, fresh, torch.optim.Adam(fresh.parameters()))


def test_rev60_a_checkpoint_recording_the_hierarchy_s_shapes_reads_back(tmp_path):
    """save_checkpoint's _plain accepts any list (it rebuilds it as type(value)) and the file is
    read with torch.load(weights_only=True).  Since 32ea9c4 a graph's structure (h.shapes,
    h.edges, ...) is a convex_attention.graph.FrozenList, a list subclass: recording the model's
    attention levels in extra (model.hierarchy.shapes, a plain list of tuples until today)
    writes a FrozenList into the file, the save succeeds, and read_checkpoint then refuses the
    file ("Unsupported global: GLOBAL convex_attention.graph.FrozenList").  Either _plain makes
    a list subclass a plain list, or it refuses it at save time (TypeError, as for other
    objects); never a file that cannot be read back."""
    model = AttentionUNet(method="exact", **SMALL)
    levels = model.hierarchy.shapes
    try:
        path = _saved(tmp_path, extra={"levels": levels})
    except TypeError:
        return  # refused before writing: acceptable
    try:
        state = read_checkpoint(path)
    except ValueError as exc:
        raise AssertionError(f"a checkpoint that save_checkpoint wrote is refused: {exc}") from exc
    assert state["levels"] == [tuple(s) for s in levels]


# ----------------------------------------------------------------------------- review ca_rev84

def test_rev84_a_checkpoint_whose_weight_bytes_changed_on_disk_is_refused_as_damaged(tmp_path):
    """torch.save writes a zip whose every record carries a CRC-32; torch.load does not check them.  Four bytes
    of the first weight tensor changed (a bit rot, a bad copy) give a finite value, so the finiteness check does
    not see it either: load_model returns a model whose weights differ from those saved.  zipfile's testzip()
    names the damaged record; the file should be refused with a one-line ValueError."""
    import struct
    import zipfile

    torch.manual_seed(0)
    model = AttentionUNet(method="exact", **SMALL)
    path = save_checkpoint(str(tmp_path / "m.pt"), model, epoch=1)
    with zipfile.ZipFile(path) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 8)
    raw = bytearray((tmp_path / "m.pt").read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[record.header_offset + 26:record.header_offset + 30])
    start = record.header_offset + 30 + name_len + extra_len
    raw[start:start + 4] = struct.pack("<f", 1234.5)  # a finite value no init draws
    (tmp_path / "m.pt").write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() == record.filename  # the archive itself says the record is damaged
    with pytest.raises(ValueError, match="damaged|corrupt|CRC|checksum") as refused:
        loaded, _ = load_model(path)
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, loaded.state_dict()[k])]
        raise AssertionError(f"loaded silently; weights changed: {changed}")
    assert "\n" not in str(refused.value)


# ----------------------------------------------------------------------------- review ca_rev85

def test_rev85_a_checkpoint_save_checkpoint_wrote_reads_back_whatever_torch_s_crc_option(tmp_path):
    torch.manual_seed(0)
    model = AttentionUNet(method="exact", **SMALL)
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        path = save_checkpoint(str(tmp_path / "m.pt"), model, epoch=1)
    finally:
        torch.serialization.set_crc32_options(before)
    loaded, _ = load_model(path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_an_optimiser_state_of_another_optimiser_is_refused_naming_the_optimiser(tmp_path):
    """An SGD state loaded into Adam was refused as "its weights do not fit its own configuration ('step')":
    the weights fit; the optimiser does not."""
    from convex_attention.paper.models.checkpoint import load_checkpoint

    torch.manual_seed(0)
    model = AttentionUNet(method="exact", **SMALL)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4, 32, 32)).logits.sum().backward()
    sgd.step()
    path = save_checkpoint(str(tmp_path / "m.pt"), model, optimizer=sgd, epoch=1)
    fresh = AttentionUNet(method="exact", **SMALL)
    with pytest.raises(ValueError, match="its optimiser state does not fit this Adam optimiser") as refused:
        load_checkpoint(path, fresh, torch.optim.Adam(fresh.parameters()))
    assert "weights do not fit" not in str(refused.value)


# ---- ca_rev143 (strict xfail: review of ea9699c)

def test_ca_rev143_weights_that_are_not_finite_as_loaded_are_refused(tmp_path):
    """Run: a model in float64 whose classifier weight [0, 0] is 1e300 (finite), saved with
    save_checkpoint; load_model(path).  Expected: ValueError (NonFiniteWeights, or a refusal of
    weights of another type) before use.  Observed: _check_finite_weights reads the stored float64
    tensor (finite) and load_state_dict copies it into the float32 model: classifier.weight[0, 0]
    is inf, and the model was handed back without a word."""
    torch.manual_seed(0)
    model = AttentionUNet(method="softmax", **SMALL).double()
    with torch.no_grad():
        model.classifier.weight[0, 0] = 1e300
    path = save_checkpoint(str(tmp_path / "m.pt"), model)
    try:
        loaded, _ = load_model(path)
    except ValueError:
        return
    assert all(bool(torch.isfinite(p).all()) for p in loaded.parameters()), \
        float(loaded.classifier.weight[0, 0].detach())


# ---- ca_rev173 (review of 2d837fc; its strict xfails now pass)

def test_ca_rev173_complex_weights_are_refused(tmp_path):
    """Run: a softmax model's checkpoint whose classifier.weight is stored as complex64 (real part the weight,
    imaginary part 1; a tampered file); load_model(path) (as explain, train --resume and experiment load).
    Expected: ValueError (the weights are not of the model's type), as for other wrong tensors.  Observed: the
    file is accepted (_check_finite_weights even reads complex tensors) and load_state_dict copies it into the
    float32 weight with a UserWarning 'Casting complex values to real discards the imaginary part'."""
    model = AttentionUNet(method="softmax", **SMALL)
    path = save_checkpoint(str(tmp_path / "m.pt"), model)
    state = torch.load(path, weights_only=True)
    state["model"]["classifier.weight"] = torch.complex(state["model"]["classifier.weight"],
                                                        torch.ones_like(state["model"]["classifier.weight"]))
    torch.save(state, path)
    with pytest.raises(ValueError):
        load_model(path)


# ---- ca_rev209 (mutation review of ec87765)


def _ca_rev209_trained(tmp_path):
    """A checkpoint as training writes it at epoch 2 (a stepped Adam, two metric rows, best_epoch 1), read."""
    model = AttentionUNet(method="exact", norm="group", **SMALL)
    path = save_checkpoint(str(tmp_path / "m.pt"), model, _stepped(model), epoch=2,
                           metrics=[{"epoch": 1}, {"epoch": 2}], extra={"best_epoch": 1})
    return read_checkpoint(path)


@pytest.mark.parametrize("damage,words", [
    ({"best_epoch": -1}, "best_epoch -1 is not an epoch from 0 to 2"),
    ({"best_epoch": True}, "best_epoch True is not an epoch"),
    ({"metrics": [{"epoch": True}, {"epoch": 2}]}, "metrics row 0 has no epoch"),
    ({"metrics": [{"epoch": 1}, {"epoch": 1}]}, r"metrics rows of epochs \[1, 1\] are not one per epoch"),
    ("betas", r"optimizer's betas \(1.0, 0.999\) are not two numbers in \[0, 1\)"),
    ("step", r"optimizer's step tensor\(True\) is not a number")], ids=[
    "best_epoch-negative", "best_epoch-bool", "row-epoch-bool", "row-epoch-twice", "beta-one", "step-bool"])
def test_ca_rev209_each_damaged_field_is_refused_on_reading(tmp_path, damage, words):
    """Kills, one per case: best_epoch's range check without its lower bound (`not best <= epoch`); best_epoch's
    and a row's epoch typed by isinstance (True an epoch); the rows' order check allowing a repeated epoch (`b < a`);
    betas checked in [0, 1] (beta 1: Adam's bias correction divides by zero); a step's check admitting a bool
    tensor (`step.dtype != torch.bool` dropped)."""
    good = _ca_rev209_trained(tmp_path)
    bad = {**good, **damage} if isinstance(damage, dict) else {**good, "optimizer": {
        "state": good["optimizer"]["state"], "param_groups": [dict(g) for g in good["optimizer"]["param_groups"]]}}
    if damage == "betas":
        bad["optimizer"]["param_groups"][0]["betas"] = (1.0, 0.999)
    elif damage == "step":
        first = next(iter(good["optimizer"]["state"]))
        bad["optimizer"]["state"] = {**good["optimizer"]["state"],
                                     first: {**good["optimizer"]["state"][first], "step": torch.tensor(True)}}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=f"damaged convex-attention checkpoint: {words}") as err:
        read_checkpoint(str(tmp_path / "bad.pt"))
    assert "\n" not in str(err.value)


def test_ca_rev209_an_optimiser_state_keyed_by_text_is_refused_with_a_value_error(tmp_path):
    """Kills check_optimizer_fits without `type(number) is not int`: a state keyed "0" (JSON's keys) then
    compares text with a number (a raw TypeError) instead of the one-line refusal."""
    good = _ca_rev209_trained(tmp_path)
    state = {str(k): v for k, v in good["optimizer"]["state"].items()}
    torch.save({**good, "optimizer": {**good["optimizer"], "state": state}}, tmp_path / "bad.pt")
    model = AttentionUNet(method="exact", norm="group", **SMALL)
    with pytest.raises(ValueError, match="does not fit the model's parameters \\(a state of parameter '0'"):
        load_checkpoint(str(tmp_path / "bad.pt"), model, torch.optim.Adam(model.parameters()))


# ---- ca_rev215 (mutation review of 38d417d, reports, sanity, data and models): tests that kill surviving mutants


def test_ca_rev215_a_best_epoch_after_the_checkpoints_epoch_is_refused(tmp_path):
    """best_epoch must be an epoch from 0 to the checkpoint's epoch: 3 at epoch 2 is no epoch
    it ran (mutant: the upper bound ``best <= epoch`` dropped)."""
    good = _ca_rev209_trained(tmp_path)
    torch.save({**good, "best_epoch": 3}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="damaged convex-attention checkpoint: best_epoch 3 is not an epoch from 0 "
                                         "to 2"):
        read_checkpoint(str(tmp_path / "bad.pt"))
    torch.save({**good, "best_epoch": 2}, tmp_path / "last.pt")
    assert read_checkpoint(str(tmp_path / "last.pt"))["best_epoch"] == 2  # the last epoch itself is one


def test_ca_rev215_an_optimiser_state_listing_fewer_parameters_than_the_model_is_refused_before_resuming(tmp_path):
    """``check_optimizer_fits`` (what ``--resume`` runs before building its optimiser) refuses
    param_groups that list one parameter fewer than the model has, though every state it
    holds fits (mutant: the count check dropped)."""
    from convex_attention.paper.models import check_optimizer_fits

    good = _ca_rev209_trained(tmp_path)
    model = AttentionUNet(method="exact", norm="group", **SMALL)
    n = len(list(model.parameters()))
    groups = [dict(g) for g in good["optimizer"]["param_groups"]]
    assert sorted(p for g in groups for p in g["params"]) == list(range(n))  # oracle: the good one lists all
    check_optimizer_fits("m.pt", good, model)
    groups[-1]["params"] = groups[-1]["params"][:-1]
    bad = {**good, "optimizer": {"state": good["optimizer"]["state"], "param_groups": groups}}
    with pytest.raises(ValueError, match=f"it lists {n - 1} parameters, the model has {n}"):
        check_optimizer_fits("m.pt", bad, model)
