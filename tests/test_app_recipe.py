"""The Train page's recipe and loss-preset widgets (issue 18) and the Sweeps form's HXE grid (AppTest).

Runs are launched the way the Train page launches them (Start: a real ``python -m workbench train`` process);
the tests read the queued run's config from the store at once and never wait for training (the store_path
fixture stops whatever is still running). The Sweeps test starts a real sweep process and stops it at once.
"""

from __future__ import annotations

import re

import pytest
import yaml
from test_app import app, charts, store_path, texts, values  # noqa: F401  (shared AppTest helpers and fixture)

from app_pages._shared import config_to_form
from workbench.config import Config, flatten
from workbench.launch import config_path, stop_sweep
from workbench.store import RunStore
from workbench.sweep import read_sweep_status

pytest.importorskip("streamlit")

# a 300-sample, 1-epoch run: whatever the launched process manages before teardown stops it is cheap
TINY = {"data_cfg": {"NAME": "synthetic", "SYNTHETIC": {"N": 300, "BRANCHING": [2, 2], "NULL_RATES": [0, 0.2],
                                                        "NUM_FEATURES": 4}},
        "tr_epochs": 1, "tr_hidden": "8"}
RECIPE_KEYS = ("TRAIN.LR_SCHEDULE", "TRAIN.WARMUP_EPOCHS", "TRAIN.LR_STEPS", "TRAIN.LR_GAMMA", "TRAIN.CLIP_GRAD_NORM",
               "TRAIN.ACCUMULATE", "LOSS.LABEL_SMOOTHING", "LOSS.SMOOTHING", "LOSS.SOFT_LABELS_BETA", "LOSS.HXE_ALPHA")


def errors(at) -> list[str]:
    """The page's error messages with Markdown escaping undone (the page escapes every message)."""
    return [e.value.replace("\\", "") for e in at.error]


def resolved(at) -> dict:
    """The form's config as the page shows it (the "Resolved config (YAML)" code block), flattened."""
    return flatten(yaml.safe_load(at.code[0].value))


def start(at, store_path) -> dict:
    """Click Start; the one queued run's stored config (the launched process is not waited for)."""
    at.button(key="tr_start").click().run()
    assert not at.exception, at.exception
    runs = RunStore(store_path).runs()
    assert len(runs) == 1, texts(at)
    return RunStore(store_path).run(runs["id"][0])["config"]


def test_untouched_form_keeps_the_previous_defaults(store_path):
    at = app("train")
    assert not at.error, [e.value for e in at.error]
    form, default = resolved(at), flatten(Config().to_dict())
    assert {k: form[k] for k in RECIPE_KEYS} == {k: default[k] for k in RECIPE_KEYS}
    assert form["MODEL.HEAD"] == "independent"  # the head the form had before issue 18
    recipe = [e for e in at.expander if e.label.startswith("Recipe")]
    assert len(recipe) == 1 and not recipe[0].proto.expanded  # collapsed: a plain run never opens it
    assert at.text_input(key="tr_lr_steps").proto.disabled  # LR steps only for the step schedule
    assert at.number_input(key="tr_clip").proto.disabled and at.number_input(key="tr_hxe_alpha").proto.disabled
    # every new widget says what it does
    widgets = [at.selectbox(key="tr_lr_schedule"), at.text_input(key="tr_lr_steps"), at.number_input(key="tr_lr_gamma"),
               at.number_input(key="tr_warmup"), at.number_input(key="tr_accumulate"), at.toggle(key="tr_clip_on"),
               at.number_input(key="tr_clip"), at.radio(key="tr_loss_preset"), at.number_input(key="tr_hxe_alpha"),
               at.number_input(key="tr_soft_beta"), at.number_input(key="tr_ls"), at.radio(key="tr_smoothing")]
    assert all(w.proto.help for w in widgets)


def test_recipe_widgets_set_the_launched_run_config(store_path):
    at = app("train", **TINY)
    at.selectbox(key="tr_lr_schedule").set_value("step").run()
    assert not at.text_input(key="tr_lr_steps").proto.disabled
    at.text_input(key="tr_lr_steps").set_value("0.5, 0.75")
    at.number_input(key="tr_lr_gamma").set_value(0.5)
    at.number_input(key="tr_warmup").set_value(0.25)
    at.number_input(key="tr_accumulate").set_value(2)
    at.toggle(key="tr_clip_on").set_value(True).run()
    at.number_input(key="tr_clip").set_value(2.5)
    at.radio(key="tr_smoothing").set_value("taxonomy")
    at.number_input(key="tr_ls").set_value(0.1)
    at.radio(key="tr_loss_preset").set_value("soft").run()  # soft labels replace label smoothing: eps shown 0
    assert at.number_input(key="tr_ls").proto.disabled and at.number_input(key="tr_ls").value == 0
    at.number_input(key="tr_soft_beta").set_value(4.0).run()
    assert not at.error, [e.value for e in at.error]
    config = start(at, store_path)
    train, loss = config["TRAIN"], config["LOSS"]
    assert (train["LR_SCHEDULE"], train["LR_STEPS"], train["LR_GAMMA"]) == ("step", [0.5, 0.75], 0.5)
    assert (train["WARMUP_EPOCHS"], train["ACCUMULATE"], train["CLIP_GRAD_NORM"]) == (0.25, 2, 2.5)
    assert (loss["SOFT_LABELS_BETA"], loss["HXE_ALPHA"], loss["LABEL_SMOOTHING"]) == (4.0, None, 0.0)
    assert loss["SMOOTHING"] == "taxonomy" and config["MODEL"]["HEAD"] == "independent"


def test_hxe_preset_forces_the_marginal_head(store_path):
    at = app("train", **TINY)
    assert at.radio(key="tr_head").value == "independent"
    at.number_input(key="tr_ls").set_value(0.1)
    at.radio(key="tr_loss_preset").set_value("hxe").run()
    head = at.radio(key="tr_head")
    assert head.value == "marginal" and head.proto.disabled  # shown, and not to be changed while HXE is on
    assert at.slider(key="tr_w").proto.disabled  # alpha sets the rank weights
    assert "marginal head" in texts(at)
    at.number_input(key="tr_hxe_alpha").set_value(0.4).run()
    config = start(at, store_path)
    assert config["MODEL"]["HEAD"] == "marginal" and config["LOSS"]["HXE_ALPHA"] == 0.4
    assert config["LOSS"]["LABEL_SMOOTHING"] == 0.1 and config["LOSS"]["SOFT_LABELS_BETA"] is None


@pytest.mark.parametrize("steps, message", [
    ("", r"`TRAIN.LR_STEPS` must list at least one epoch for LR_SCHEDULE 'step'"),
    ("5, 2", r"`TRAIN.LR_STEPS` must be .*increasing.*, got \[5.0, 2.0\]"),  # the config's rule, in its words
    ("5, x", r"LR steps: 'x' is not a valid float"),
])
def test_invalid_recipe_is_shown_and_launches_nothing(store_path, steps, message):
    at = app("train", **TINY)
    at.selectbox(key="tr_lr_schedule").set_value("step").run()
    at.text_input(key="tr_lr_steps").set_value(steps).run()
    assert any(re.search(message, e) for e in errors(at)), errors(at)
    at.button(key="tr_start").click().run()
    assert not at.exception, at.exception
    assert RunStore(store_path).runs().empty
    assert any(re.search(message, e) for e in errors(at))


def test_loading_a_run_carries_the_new_keys_both_ways(store_path):
    overrides = {"TRAIN.LR_SCHEDULE": "step", "TRAIN.LR_STEPS": [3, 7.5], "TRAIN.LR_GAMMA": 0.3,
                 "TRAIN.WARMUP_EPOCHS": 1.5, "TRAIN.CLIP_GRAD_NORM": 0.7, "TRAIN.ACCUMULATE": 4,
                 "LOSS.LABEL_SMOOTHING": 0.2, "LOSS.SMOOTHING": "taxonomy", "LOSS.HXE_ALPHA": 0.25,
                 "MODEL.HEAD": "marginal", "MODEL.HIDDEN": [16], "DATA.SYNTHETIC.N": 300}
    stored = Config().with_overrides(overrides)
    store = RunStore(store_path)
    run_id = store.create_run(stored.to_dict(), status="finished")
    at = app("runs")
    at.selectbox(key="ru_load_run").set_value(run_id).run()
    at.button(key="ru_load").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Train"
    assert at.selectbox(key="tr_lr_schedule").value == "step" and at.text_input(key="tr_lr_steps").value == "3, 7.5"
    assert at.number_input(key="tr_accumulate").value == 4 and at.toggle(key="tr_clip_on").value
    assert at.radio(key="tr_loss_preset").value == "hxe" and at.number_input(key="tr_hxe_alpha").value == 0.25
    assert "a new run will not have" not in texts(at)  # the form carries every new key
    form, original = resolved(at), flatten(stored.to_dict())
    assert {k: form[k] for k in RECIPE_KEYS} == {k: original[k] for k in RECIPE_KEYS}

    # soft labels: the other preset, and a run from before issue 18 (no new keys) gets the defaults back
    soft = Config().with_overrides({"LOSS.SOFT_LABELS_BETA": 12.0, "MODEL.HIDDEN": [16]}).to_dict()
    old = Config().with_overrides({"MODEL.HIDDEN": [16]}).to_dict()
    for section, key in [("TRAIN", k) for k in ("LR_SCHEDULE", "WARMUP_EPOCHS", "LR_STEPS", "LR_GAMMA",
                                                 "CLIP_GRAD_NORM", "ACCUMULATE")] + \
                        [("LOSS", k) for k in ("LABEL_SMOOTHING", "SMOOTHING", "SOFT_LABELS_BETA", "HXE_ALPHA")]:
        del old[section][key]
    for config, preset in ((soft, "soft"), (old, "w")):
        # the form the Runs page's button fills (load_config_into_form), on top of a form left at HXE and step
        at = app("train", **{**config_to_form(stored.to_dict()), **config_to_form(config)}, data_cfg=config["DATA"])
        assert at.radio(key="tr_loss_preset").value == preset
        form, expected = resolved(at), flatten(Config.from_dict(config).to_dict())
        assert {k: form[k] for k in RECIPE_KEYS} == {k: expected[k] for k in RECIPE_KEYS}


def test_a_config_with_hxe_and_soft_labels_names_what_the_form_drops():
    from app_pages._shared import config_not_in_form

    both = Config().with_overrides({"MODEL.HEAD": "marginal", "LOSS.HXE_ALPHA": 0.5,
                                    "LOSS.SOFT_LABELS_BETA": 3.0}).to_dict()
    assert config_to_form(both)["tr_loss_preset"] == "hxe"
    assert "LOSS.SOFT_LABELS_BETA=3.0" in config_not_in_form(both)


def test_sweeps_form_hxe_grid(store_path):
    at = app("sweeps", data_cfg=TINY["data_cfg"])
    at.text_input(key="sw_hxe").set_value("0, 0.5")  # with the default w grid of five values: refused
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert any("give one w value" in e for e in errors(at)), errors(at)
    assert not (store_path.parent / "sweeps").exists() or not list((store_path.parent / "sweeps").glob("*/status.json"))

    at.text_input(key="sw_w").set_value("0.3")
    at.text_input(key="sw_hxe").set_value("0, 0.5")
    at.number_input(key="sw_seeds").set_value(1)
    at.button[0].click().run()
    assert not at.exception, at.exception
    sweep_id = at.session_state["sweep_id"]
    try:
        record = read_sweep_status(store_path, sweep_id)
        assert record["grid"]["LOSS.HXE_ALPHA"] == [0.0, 0.5] and record["grid"]["LOSS.W"] == [0.3]
        assert record["n_trials"] == 2
        base = Config.load(config_path(RunStore(store_path), sweep_id))
        assert base.MODEL.HEAD == "marginal"  # HXE is defined on the marginal head only
    finally:
        stop_sweep(sweep_id, store_path)


def test_sweep_results_follow_hxe_alpha(store_path):
    """A sweep over HXE α (one w): the results chart and the trials table are per α, not per w."""
    store = RunStore(store_path)
    for alpha in (0.0, 0.5):
        for seed in (0, 1):
            cfg = Config().with_overrides({"MODEL.HEAD": "marginal", "LOSS.HXE_ALPHA": alpha, "TRAIN.SEED": seed})
            run_id = store.create_run(cfg.to_dict(), run_id=f"hxe-{alpha}-{seed}", sweep_id="sweep-hxe", status="running")
            acc = 0.5 + 0.2 * alpha + 0.01 * seed
            store.write_epoch(run_id, 0, {"core/val_partial_chain_acc": acc, "core/val_chain_acc": acc / 2,
                                          "core/val_loss": 1 - acc, **{f"val/acc/level{r}": acc for r in range(3)}})
            store.update_run(run_id, status="finished")
    at = app("sweeps")
    assert not at.exception, at.exception
    spec = charts(at)["sweep_acc"]
    assert spec["layout"]["xaxis"]["title"]["text"] == "LOSS.HXE_ALPHA"
    chain = [t for t in spec["data"] if t["name"] == "chain" and t.get("xaxis") == "x2"][0]
    assert list(values(chain["x"])) == [0.0, 0.5]
    assert values(chain["y"]) == pytest.approx([(0.5 + 0.005) / 2, (0.6 + 0.005) / 2])
    assert "LOSS.HXE_ALPHA" in at.dataframe[-1].value.columns  # the trials table names the swept key
