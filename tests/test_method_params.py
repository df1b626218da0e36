"""Each method declares its own parameters: validated flat under `method.`, listed by `harness methods --verbose`
and the API, with existing presets and cache keys unchanged."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import harness
from harness.cli import main
from harness.config import load_experiment, with_overrides
from harness.store import stable_hash

# stable_hash(exp.method.model_dump()) of the closed MethodSpec before methods declared their own parameters
# (main at 50338eb), for load_experiment("sandbox", overrides): the method's part of the training key.
KEYS_BEFORE = [
    ({}, "9804e73f5fddfa02"),
    ({"method.name": "fusellm"}, "754515a7048526aa"),
    ({"method.name": "averaging"}, "91a2c09b53f87ba0"),
    ({"method.name": "averaging", "method.weighting": "avgce"}, "313536adcf5e7a68"),
    ({"method.schedule.name": "reversed", "method.beta": 0.5}, "472a99e0cedba78e"),
    ({"method.name": "uld", "method.lam": 0.7}, "757fb5dbc48dea41"),
]


@pytest.mark.parametrize(("overrides", "key"), KEYS_BEFORE)
def test_unchanged_settings_keep_their_key(overrides: dict[str, object], key: str) -> None:
    assert stable_hash(load_experiment("sandbox", overrides).method.key()) == key


def _dry_run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", "-t", "sandbox", "--set", "sandbox.size=micro", *args, "--dry-run"])
    return result.exit_code, result.stderr


def test_method_fields_are_validated_against_the_chosen_methods_parameters() -> None:
    # the presets name ProFuser's fields at their defaults; another method still runs from them
    assert _dry_run("-m", "fusellm")[0] == 0
    code, err = _dry_run("-m", "averaging", "--set", "method.weighting=avgce")
    assert code == 0, err
    code, err = _dry_run("-m", "fusellm", "--set", "method.beta=0.5")
    assert code == 2 and err.count("\n") == 1
    assert "method.beta: method 'fusellm' has no parameter 'beta'; its own: none; every method's: lam" in err
    code, err = _dry_run("-m", "averaging", "--set", "method.weighting=median")
    assert code == 2 and "method.weighting" in err and err.count("\n") == 1
    code, err = _dry_run("--set", "method.schedule.switch=2")
    assert code == 2 and "method.schedule.switch" in err
    code, err = _dry_run("--set", "method.gamma=1")
    assert code == 2 and "its own: beta, schedule" in err


def test_methods_list_their_parameters_on_the_cli_and_in_the_api() -> None:
    infos = {m.name: m for m in harness.describe_methods()}
    assert {"profuser", "fusellm", "averaging", "inference-only", "uld"} <= set(infos)
    switch = next(p for p in infos["profuser"].parameters if p.name == "schedule.switch")
    assert switch.default == 0.5 and "stage 1" in switch.description
    assert [p.name for p in infos["averaging"].parameters] == ["weighting"] and infos["fusellm"].parameters == []
    assert {p.name for p in harness.shared_parameters()} >= {"name", "lam", "temperature", "kl_direction"}
    shown = CliRunner().invoke(main, ["methods", "--verbose"], terminal_width=200)
    assert shown.exit_code == 0
    assert "schedule.switch" in shown.stdout and "'uniform'" in shown.stdout and "shared by every method" in shown.stdout


def test_a_swapped_method_keeps_only_the_parameters_it_declares() -> None:
    exp = load_experiment("sandbox", {"method.beta": 0.5, "method.schedule.name": "linear"})
    swapped = with_overrides(exp, {"method.name": "inference-only"})
    assert swapped.method.own_parameters() == {"beta": 0.5}  # beta is inference-only's too; the schedule is not
    assert with_overrides(exp, {"method.name": "fusellm"}).method.own_parameters() == {}
