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
