"""The one-line errors of the dlrun command (dlrun.cli.messages), in-process: Hydra's real
exceptions from composing bad overrides, turned into the line the CLI prints."""
import pytest
from hydra import compose, initialize_config_module

from dlrun.cli.messages import one_line, unknown_key


def error_line(*overrides: str) -> str:
    with initialize_config_module("dlrun.conf", version_base="1.3"):
        with pytest.raises(Exception) as raised:
            compose("config", overrides=list(overrides))
    return one_line(raised.value)


def test_unknown_option_of_a_list_group_is_the_same_line_as_other_groups():
    line = error_line("regularizer=[dropot]")
    assert line.startswith("unknown regularizer 'dropot'; choose one of: dropconnect, dropout, l1")
    assert error_line("model=cnnn").startswith("unknown model 'cnnn'; choose one of: autoencoder, cnn")
    assert "Config search path" not in line


@pytest.mark.parametrize("key, argv, want", [
    ("optim.learning_rate", [], "optim.learning_rate is not a setting of optim=adam; did you mean optim.lr?"),
    ("optim.learning_rate", ["+experiment=radford_convnet"], "of optim=rmsprop; did you mean optim.lr"),
    ("optim.lrr", ["optim=sgd"], "of optim=sgd; did you mean optim.lr?"),
    ("optim.momentum", ["optim=sgd"], "optim.momentum is not a setting of optim=sgd; optim=sgd has: lr "),
    ("model.hiden", [], "of model=mlp; did you mean model.hidden?"),
    ("model.pretrain_epochs", ["model=mlp"], "it is a setting of model=dbn, sda: choose one first"),
    ("epochs", [], "did you mean train.epochs?"),
    ("optimizer", [], "did you mean optim?"),
    ("regularizer.dropout", [], "regularizer 'dropout' is not selected; select it first"),
    ("regularizer.dropout.hiden", ["regularizer=[dropout]"], "not a setting of regularizer dropout; valid keys: input, hidden, conv"),
    ("logger.tensorboard.foo", ["logger=[tensorboard]"], "valid keys: log_dir"),
])
def test_did_you_mean_suggests_keys_of_the_selected_option(key, argv, want):
    assert want in unknown_key(key, argv)


def test_a_misspelt_key_through_hydra_names_the_selected_option():
    # in-process the selection comes from sys.argv (pytest's: no override), so the default adam
    assert "optim.lrr is not a setting of optim=adam; did you mean optim.lr?" in error_line("optim.lrr=0.1")


def test_config_diff_names_the_chosen_option_and_shared_keys_first():
    from dlrun.config.identity import config_diff
    theirs = {"model": {"name": "logreg", "init": "zeros"}, "optim": {"lr": 0.1}}
    ours = {"model": {"name": "mlp", "hidden": [625], "activation": "relu", "init": "glorot"},
            "optim": {"lr": 0.5}}
    assert config_diff(theirs, ours) == (
        "model.name (logreg there, mlp here), model.init (zeros there, glorot here), "
        "optim.lr (0.1 there, 0.5 here), model.activation (<absent> there, relu here) and 1 more")
