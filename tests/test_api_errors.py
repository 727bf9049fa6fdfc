"""Every user-facing argument that cannot work is refused with a message naming it, showing
what came and saying what to pass instead: ``watch`` and its options, ``EarlyStopping``,
``mon.log`` (which warns and goes on: a training loop must not die of a bad metric) and
the ``babysit`` command's options (one line on stderr, exit status 2, no traceback)."""
from __future__ import annotations

import argparse
import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn

import monitor
from monitor import cli
from monitor.detectors.divergence import Divergence
from monitor.early_stopping import EarlyStopping, known_flag_kinds
from trainer_hooks import BabysitWarning, watch
from trainer_hooks.config import OPTIONS, WatchConfig


@pytest.fixture(autouse=True)
def no_babysit_variables(monkeypatch):
    """The tables below are about the arguments: a BABYSIT_* variable of the machine must not
    fill any of them in."""
    for name in ("BABYSIT_SERVER", "BABYSIT_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a directory")
    return path


def model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


# ------------------------------------------------------------------------------ watch options

#: (options, exception, words the message must hold: the option, what came, what to pass)
WATCH_OPTIONS = [
    ({"every": 0.5}, TypeError, ["every", "whole number of steps", "None for automatic", "0.5", "every=1"]),
    ({"every": 0}, ValueError, ["every", ">= 1", "got 0", "pass every=1"]),
    ({"every": -3}, ValueError, ["every", "got -3", "pass every=1"]),
    ({"every": True}, TypeError, ["every", "got True", "every=10"]),
    ({"every": "10"}, TypeError, ["every", "'10' (a str)", "every=10"]),
    ({"overhead": 0}, ValueError, ["overhead", "between 0 and 1", "got 0", "overhead=0.005"]),
    ({"overhead": -0.1}, ValueError, ["overhead", "got -0.1", "overhead=0.005"]),
    ({"overhead": 1}, ValueError, ["overhead", "not a per cent", "overhead=0.01"]),
    ({"overhead": 5}, ValueError, ["overhead", "got 5", "for 5 % pass overhead=0.05"]),
    ({"overhead": "0.5%"}, TypeError, ["overhead", "(a str)", "overhead=0.005"]),
    ({"sample_size": 0}, ValueError, ["sample_size", "elements per tensor", "got 0", "sample_size=1 or more"]),
    ({"sample_size": 100.5}, TypeError, ["sample_size", "got 100.5", "sample_size=100"]),
    ({"dead_window": 0}, ValueError, ["dead_window", "sampled batches", "dead_window=1 or more"]),
    ({"dead_window": None}, TypeError, ["dead_window", "got None", "dead_window=8"]),
    ({"filters_every": -1}, ValueError, ["filters_every", "sampled steps", "filters_every=1 or more"]),
    ({"agree_every": 0}, ValueError, ["agree_every", "steps", "agree_every=1 or more"]),
    ({"run": 7}, TypeError, ["run", "got 7", "run='digits-cnn'"]),
    ({"run": "my run"}, ValueError, ["run name 'my run' is not usable", "A-Z a-z 0-9 . _ -", "run='digits-cnn'"]),
    ({"run": "../../etc/passwd"}, ValueError, ["run name '../../etc/passwd'", "run='digits-cnn'"]),
    ({"run": "x" * 101}, ValueError, ["run name", "1-100 characters", "run='digits-cnn'"]),
    ({"config": [("lr", 0.1)]}, TypeError, ["config", "mapping of hyper-parameters", "got a list", "config={'lr'"]),
    ({"config": "lr=0.1"}, TypeError, ["config", "'lr=0.1' (a str)", "config={'lr'"]),
    ({"config": argparse.Namespace(lr=0.1)}, TypeError,
     ["config", "got a Namespace", "config=vars(...)"]),
    ({"logdir": None}, TypeError, ["logdir", "path of a directory", "got None", "logdir='runs'"]),
    ({"logdir": 3}, TypeError, ["logdir", "got 3", "logdir='runs'"]),
    ({"server": "localhost:5000"}, ValueError, ["server", "http(s)://host:port", "'localhost:5000'",
                                                "http://localhost:5000"]),
    ({"server": "ws://127.0.0.1:5000"}, ValueError, ["server", "'ws://127.0.0.1:5000'", "use http://"]),
    ({"server": "http://127.0.0.1:99999"}, ValueError, ["server", "1..65535"]),
    ({"server": "http://127.0.0.1:5000/runs/x"}, ValueError, ["server", "drop the path", "http://127.0.0.1:5000"]),
    ({"server": "ftp://example.com"}, ValueError, ["server", "'ftp://example.com'", "http://127.0.0.1:5000"]),
    ({"server": ""}, ValueError, ["server", "got ''", "leave server out (None)"]),
    ({"server": 5000}, TypeError, ["server", "got 5000", "server='http://127.0.0.1:5000'"]),
    ({"server": "http://127.0.0.1:9", "token": ""}, ValueError, ["token", "got an empty string",
                                                                 "the token given to `babysit serve`"]),
    ({"server": "http://127.0.0.1:9", "token": 1234}, TypeError, ["token", "got 1234", "as a str"]),
    ({"dashboard": "yes"}, TypeError, ["dashboard", "True or False", "'yes' (a str)", "dashboard=True"]),
    ({"dashboard": True, "server": "http://127.0.0.1:9"}, ValueError,
     ["server=URL", "dashboard=True", "not both", "pass only one"]),
    ({"detectors": "divergence"}, TypeError, ["detectors", "'divergence' (a str)", "detectors=[Divergence()]"]),
    ({"detectors": Divergence()}, TypeError, ["detectors", "got a Divergence",
                                              "pass a list: detectors=[Divergence()]"]),
    ({"detectors": [Divergence]}, TypeError, ["detectors", "the class Divergence", "pass an instance, Divergence()"]),
    ({"detectors": [Divergence(), "plateau"]}, TypeError, ["detectors", "item 1 is a str", "Divergence()"]),
    ({"detectors": 3}, TypeError, ["detectors", "got 3", "or [] for none"]),
    ({"early_stopping": "val_loss"}, TypeError, ["early_stopping", "'val_loss' (a str)",
                                                 "early_stopping=EarlyStopping(monitor='val_loss')"]),
    ({"early_stopping": EarlyStopping}, TypeError, ["early_stopping", "the class EarlyStopping",
                                                    "pass an instance"]),
    ({"early_stopping": 3}, TypeError, ["early_stopping", "got 3", "EarlyStopping(monitor='val_loss'"]),
    ({"evry": 5}, TypeError, ["unknown option 'evry'", "did you mean 'every'?", "'logdir'", "'agree_every'"]),
    ({"log_dir": "runs", "servr": "x"}, TypeError, ["unknown options", "'log_dir' (did you mean 'logdir'?)",
                                                     "'servr' (did you mean 'server'?)"]),
    ({"frobnicate": 1}, TypeError, ["unknown option 'frobnicate'", "the known options are 'run'"]),
]


@pytest.mark.parametrize("options, error, words", WATCH_OPTIONS, ids=[repr(o)[:60] for o, _, _ in WATCH_OPTIONS])
def test_a_watch_option_that_cannot_work_is_refused_saying_what_to_pass_and_nothing_is_written(
        tmp_path, options, error, words):
    model, optimizer = model_and_optimizer()
    logdir = tmp_path / "runs"
    with pytest.raises(error) as raised:
        watch(model, optimizer, **{"logdir": logdir, **options})
    message = str(raised.value)
    assert message.startswith("watch: ")
    for word in words:
        assert word in message, (word, message)
    assert not logdir.exists()
    with watch(model, optimizer, logdir=logdir, detectors=[]) as mon:  # the model was not left watched
        assert mon.step == 0


def test_a_logdir_that_is_a_file_is_refused_naming_it(tmp_path, a_file):
    for logdir, where in ((a_file, "which is a file"), (a_file / "runs", f"{str(a_file)!r} on its way is a file")):
        with pytest.raises(ValueError) as raised:
            watch(nn.Linear(2, 1), logdir=logdir)
        message = str(raised.value)
        assert "logdir" in message and repr(str(logdir)) in message and where in message
        assert "pass a directory, e.g. logdir='runs'" in message
    assert a_file.read_text() == "not a directory"


@pytest.mark.parametrize("model, words", [
    (lambda x: x, ["model must be a torch.nn.Module", "got function", "watch(model, optimizer)"]),
    (nn.Linear, ["got the class Linear", "pass an instance", "watch(Linear(...), optimizer)"]),
    ({"weight": torch.ones(2)}, ["got dict", "state_dict", "load_state_dict()"]),
    (torch.ones(2), ["got Tensor", "pass the module that computes it"]),
    (None, ["got NoneType", "pass the network itself"]),
])
def test_watching_something_that_is_not_a_module_says_what_to_pass(tmp_path, model, words):
    with pytest.raises(TypeError) as raised:
        watch(model, logdir=tmp_path / "runs")
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


def optimizer_cases():
    model = nn.Linear(2, 1)
    scheduler_optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return [
        (torch.optim.SGD, ["optimizer must be a torch.optim.Optimizer or None", "got the class SGD",
                           "torch.optim.SGD(model.parameters(), lr=...)"]),
        (torch.optim.lr_scheduler.StepLR(scheduler_optimizer, 1), ["got StepLR", "learning-rate scheduler",
                                                                   "scheduler.optimizer"]),
        ("digits", ["got str", "run='digits'"]),
        (model.parameters(), ["got generator", "the optimizer built on the parameters"]),
        (0.1, ["got float", "or leave it out"]),
    ]


@pytest.mark.parametrize("case", range(len(optimizer_cases())))
def test_an_optimizer_that_is_not_one_says_what_to_pass(tmp_path, case):
    optimizer, words = optimizer_cases()[case]
    with pytest.raises(TypeError) as raised:
        watch(nn.Linear(2, 1), optimizer, logdir=tmp_path / "runs")
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


def test_the_known_options_are_the_fields_of_the_one_config_and_it_is_frozen():
    assert OPTIONS == tuple(f.name for f in dataclasses.fields(WatchConfig))
    assert {"run", "config", "every", "logdir", "server", "token", "early_stopping"} <= set(OPTIONS)
    config = WatchConfig.from_options({"every": 5, "config": {"lr": 0.1}}, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.every = 1
    with pytest.raises(TypeError):
        config.config["lr"] = 1.0  # a read-only copy of the caller's mapping


def test_a_bad_babysit_server_variable_is_refused_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("BABYSIT_SERVER", "127.0.0.1:5000")
    with pytest.raises(ValueError) as raised:
        watch(nn.Linear(2, 1), logdir=tmp_path / "runs")
    message = str(raised.value)
    assert "environment variable BABYSIT_SERVER" in message and "http://127.0.0.1:5000" in message
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("options, environ, server, token", [
    ({}, {"BABYSIT_SERVER": "http://h:5000", "BABYSIT_TOKEN": "t"}, "http://h:5000", "t"),
    ({"server": "http://a:1", "token": "mine"}, {"BABYSIT_SERVER": "http://h:5000", "BABYSIT_TOKEN": "t"},
     "http://a:1", "mine"),
    ({}, {"BABYSIT_SERVER": "", "BABYSIT_TOKEN": ""}, None, None),  # an empty variable counts as unset
    ({"dashboard": True}, {"BABYSIT_SERVER": "http://h:5000"}, None, None),  # the dashboard is the server
])
def test_babysit_variables_fill_in_the_server_and_token_that_are_not_given(options, environ, server, token):
    config = WatchConfig.from_options(options, environ=environ)
    assert (config.server, config.token) == (server, token)


# ------------------------------------------------------------------------------ EarlyStopping

EARLY_STOPPING = [
    ({"mode": "minimum"}, ["mode", "'min' (a loss", "'max'", "got 'minimum'", "pass mode='min'"]),
    ({"mode": "maximize"}, ["mode", "got 'maximize'", "pass mode='max'"]),
    ({"mode": None}, ["mode", "got None", "pass mode='min' or mode='max'"]),
    ({"patience": -1}, ["patience", "whole number >= 0", "not epochs", "got -1", "patience=3"]),
    ({"patience": 2.5}, ["patience", "got 2.5", "patience=3"]),
    ({"patience": True}, ["patience", "got True", "patience=3"]),
    ({"min_delta": math.nan}, ["min_delta", "finite number", "got nan", "min_delta=0.001"]),
    ({"min_delta": math.inf}, ["min_delta", "got inf", "min_delta=0.001"]),
    ({"min_delta": "0.01"}, ["min_delta", "got '0.01'", "min_delta=0.001"]),
    ({"monitor": ""}, ["monitor", "name of a metric given to mon.log", "got ''", "monitor='val_loss'"]),
    ({"monitor": "val loss"}, ["monitor", "got 'val loss'", "monitor='val_loss'"]),
    ({"monitor": ("val_loss",)}, ["monitor", "got ('val_loss',)", "monitor='val_loss'"]),
    ({"stop_on": "divergance"}, ["stop_on", "flag kinds among", "no detector raises 'divergance'",
                                 "did you mean 'divergence'?"]),
    ({"stop_on": ["plateau", "nan_loss"]}, ["stop_on", "no detector raises 'nan_loss'", "dead_relu"]),
    ({"stop_on": [3]}, ["stop_on", "3 is not a kind's name", "stop_on=('divergence',)"]),
    ({"stop_on": 3}, ["stop_on", "got 3", "stop_on=('divergence',), or () for none"]),
    ({"check_finite": "no"}, ["check_finite", "True or False", "got 'no'", "check_finite=False"]),
    ({"restore_best_weights": 1}, ["restore_best_weights", "got 1", "restore_best_weights=True"]),
]


@pytest.mark.parametrize("options, words", EARLY_STOPPING, ids=[repr(o)[:50] for o, _ in EARLY_STOPPING])
def test_an_early_stopping_option_that_cannot_work_is_refused_saying_what_to_pass(options, words):
    with pytest.raises(ValueError) as raised:
        EarlyStopping(**options)
    message = str(raised.value)
    assert message.startswith("EarlyStopping: ")
    for word in words:
        assert word in message, (word, message)


def test_the_flag_kinds_early_stopping_knows_are_the_ones_the_default_detectors_raise():
    from monitor.detectors import default_detectors

    kinds = set(known_flag_kinds())
    assert {"divergence", "plateau", "overfitting", "dead_relu"} <= kinds
    assert len(kinds) >= len(default_detectors())
    assert EarlyStopping(stop_on=tuple(kinds)).stop_on == tuple(kinds)


# ------------------------------------------------------------------------------ mon.log

#: (what is logged besides a good loss, words of the warning)
BAD_SCALARS = [
    ({"bad name": 1.0}, ["not recording scalar 'bad name'", "A-Z a-z 0-9", "mon.log(**{'bad_name': ...})"]),
    ({"-loss": 1.0}, ["not recording scalar '-loss'", "mon.log(**{'loss': ...})"]),
    ({"acc": torch.ones(3)}, ["'acc'", "expected one number", "shape (3,)", "acc=acc.mean()"]),
    ({"acc": torch.ones(0)}, ["'acc'", "shape (0,)", "acc=acc.mean()"]),
    ({"flag": torch.tensor(True)}, ["'flag'", "torch.bool", "flag=flag.float()"]),
    ({"z": torch.tensor(1 + 2j)}, ["'z'", "complex", "z=z.float()"]),
    ({"lr": "fast"}, ["'lr'", "got str", "lr=float(lr)"]),
    ({"done": True}, ["'done'", "got bool", "done=float(done)"]),
    ({"acc": None}, ["'acc'", "got NoneType", "e.g. acc=0.5"]),
    ({"acc": [0.5]}, ["'acc'", "got list", "one-element tensor"]),
]


@pytest.mark.parametrize("bad, words", BAD_SCALARS, ids=[repr(b)[:40] for b, _ in BAD_SCALARS])
def test_a_scalar_that_cannot_be_recorded_warns_what_to_pass_and_the_rest_of_the_call_is_recorded(
        tmp_path, bad, words):
    model, optimizer = model_and_optimizer()
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with watch(model, optimizer, every=1000, logdir=tmp_path, detectors=[]) as mon:
        for step in range(3):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if step == 1:
                with pytest.warns(BabysitWarning) as caught:
                    mon.log(loss=loss, **bad)
                message = str(caught[0].message)
                for word in words:
                    assert word in message, (word, message)
            else:
                mon.log(loss=loss)
        assert mon.step == 3  # training went on
    scalars = monitor.load_run(mon.run_id, tmp_path).scalars
    assert scalars[scalars.name == "loss"].step.tolist() == [0, 1, 2]
    assert set(scalars.name) == {"loss", "lr"}


@pytest.mark.parametrize("unnamed, words", [
    ((2.5,), ["1 unnamed value", "takes scalars by name", "mon.log(loss=loss)"]),
    (({"loss": 2.5, "acc": 0.5},), ["by name", "mon.log(**{'loss': ..., 'acc': ...})"]),
])
def test_values_logged_without_a_name_warn_how_to_name_them_and_named_ones_are_kept(tmp_path, unnamed, words):
    with watch(nn.Linear(2, 1), logdir=tmp_path, detectors=[]) as mon:
        with pytest.warns(BabysitWarning) as caught:
            mon.log(*unnamed, acc=0.75)
        for word in words:
            assert word in str(caught[0].message), (word, str(caught[0].message))
    scalars = monitor.load_run(mon.run_id, tmp_path).scalars
    assert scalars.name.tolist() == ["acc"] and scalars.value.tolist() == [0.75]


def test_a_bad_scalar_warns_once_not_on_every_step(tmp_path):
    with watch(nn.Linear(2, 1), logdir=tmp_path, detectors=[]) as mon:
        with pytest.warns(BabysitWarning):
            mon.log(loss=1.0, acc="high")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a second warning would raise here
            for _ in range(5):
                mon.log(loss=1.0, acc="high")
    assert mon.step == 6


# ------------------------------------------------------------------------------ the CLI

#: (argv, with {file} for an existing file and {dir} for a fresh directory; words of the error line).
#: The bad option comes first; where one after it would be refused too (``--port 0``) or
#: keeps things in tmp_path (``--logdir``), a regression fails the test instead of serving.
CLI = [
    ("demo --no-serve --every 0 --logdir {dir}",
     ["argument --every", "whole number of steps >= 1", "got '0'", "'auto'"]),
    ("demo --no-serve --every often --logdir {dir}", ["argument --every", "got 'often'", "e.g. 5"]),
    ("demo --no-serve --epochs 0 --logdir {dir}", ["argument --epochs", ">= 1", "got '0'", "e.g. 8"]),
    ("demo --no-serve --batch-size 1.5 --logdir {dir}",
     ["argument --batch-size", "whole number", "got '1.5'", "e.g. 32"]),
    ("demo --no-serve --train-size -5 --logdir {dir}", ["--train-size", "1..1437", "got -5"]),
    ("demo --no-serve --train-size many --logdir {dir}", ["argument --train-size", "whole number", "got 'many'"]),
    ("demo --no-serve --train-size 5000 --logdir {dir}", ["--train-size", "1..1437", "got 5000"]),
    ("demo --no-serve --lr -0.1 --logdir {dir}", ["argument --lr", "learning rate above 0", "got '-0.1'", "e.g. 0.05"]),
    ("demo --no-serve --lr fast --logdir {dir}", ["argument --lr", "got 'fast'", "e.g. 0.05"]),
    ("demo --no-serve --lr nan --logdir {dir}", ["argument --lr", "got 'nan'"]),
    ("demo --no-serve --init-bias inf --logdir {dir}", ["argument --init-bias", "finite", "got 'inf'", "e.g. -5"]),
    ("demo --no-serve --patience -1 --logdir {dir}", ["argument --patience", ">= 0", "got '-1'", "e.g. 5"]),
    ("demo --no-serve --seed x --logdir {dir}", ["argument --seed", "whole number >= 0", "got 'x'"]),
    ("demo --no-serve --step-delay -1 --logdir {dir}", ["argument --step-delay", "seconds >= 0", "got '-1'"]),
    ("demo --port 70000", ["argument --port", "1..65535 (or 0 for a free one)", "got '70000'"]),
    ("demo --port http", ["argument --port", "got 'http'", "e.g. 5000"]),
    ("demo --no-serve --logdir {file}", ["argument --logdir", "expected a directory", "which is a file",
                                         "give a directory path"]),
    ("demo --no-serve --optimizer sgdd --logdir {dir}", ["argument --optimizer", "'sgdd'", "'sgd', 'adam'"]),
    ("demo --no-serve --run a/b --logdir {dir}", ["--run", "A-Z a-z 0-9", "got 'a/b'"]),
    ("demo --no-serve --pathology nope --logdir {dir}", ["pathology", "dead_relu", "got 'nope'"]),
    ("runs --logdir {file}", ["argument --logdir", "which is a file"]),
    ("runs --logdir {file}/runs", ["argument --logdir", "on its way is a file"]),
    ("export some-run --logdir {file}", ["argument --logdir", "which is a file"]),
    ("export some-run --logdir {dir} --out {file}", ["argument --out", "which is a file"]),
    ("export some-run --logdir {dir} --format xlsx", ["argument --format", "'xlsx'", "parquet"]),
    ("serve --port 0 --logdir {dir}", ["argument --port", "1..65535", "got '0'", "e.g. 5000"]),
    ("serve --port 65536 --logdir {dir}", ["argument --port", "got '65536'"]),
    ("serve --connections 0 --logdir {dir} --port 0", ["argument --connections", "connections >= 1", "got '0'",
                                                       "e.g. 1000"]),
    ("serve --logdir {file} --port 0", ["argument --logdir", "which is a file"]),
    ("serve --token= --logdir {dir} --port 0",
     ["argument --token", "got an empty one", "leave --token out", "$BABYSIT_TOKEN"]),
    ("serve --smtp-port 0 --logdir {dir} --port 0", ["argument --smtp-port", "1..65535", "e.g. 587"]),
    ("serve --alert-tries 0 --logdir {dir} --port 0", ["argument --alert-tries", "tries >= 1", "e.g. 3"]),
    ("serve --alert-cooldown soon --logdir {dir} --port 0", ["argument --alert-cooldown", "seconds", "got 'soon'"]),
    ("replay --server localhost:5000 --logdir {dir}", ["argument --server", "http(s)://host:port",
                                                       "got 'localhost:5000'", "http://localhost:5000"]),
    ("replay --server http://h:5000/x --logdir {dir}", ["argument --server", "drop the path"]),
    ("replay --server http://h:5000 --token= --logdir {dir}", ["argument --token", "got an empty one"]),
    ("replay --server http://h:5000 --logdir {file}", ["argument --logdir", "which is a file"]),
]


@pytest.mark.parametrize("argv, words", CLI, ids=[a for a, _ in CLI])
def test_a_bad_cli_option_exits_2_with_one_line_naming_it_and_what_to_give(tmp_path, a_file, capsys, argv, words):
    fresh = tmp_path / "fresh"
    args = [part.format(file=a_file, dir=fresh) for part in argv.split()]
    assert cli.main(args) == cli.USAGE_ERROR
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and err.startswith(f"babysit {args[0]}: error: ")
    for word in words:
        assert word.format(file=a_file) in err, (word, err)
    assert not fresh.exists() and a_file.read_text() == "not a directory"  # refused before anything was made
