import pytest

from deepmetric.training.config import DEFAULTS, ConfigError, load, resolve


def test_defaults_are_resolved_with_component_mappings():
    config = resolve({})
    assert config["data"] == {"name": "digits"}
    assert config["loss"] == {"name": "triplet", "margin": 0.2}
    assert config["miner"] is None
    assert config["optimizer"]["lr"] == DEFAULTS["optimizer"]["lr"]


def test_unknown_top_level_key_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['epoch'\]; known keys: data"):
        resolve({"epoch": 3})


def test_unknown_section_key_is_an_error():
    with pytest.raises(ConfigError, match=r"optimizer: unknown key\(s\) \['learning_rate'\]"):
        resolve({"optimizer": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match=r"eval: unknown key"):
        resolve({}, ["eval.kk=3"])


def test_set_overrides_parse_yaml_values():
    config = resolve({}, ["epochs=3", "optimizer.lr=0.01", "split=all", "miner=semi-hard", "miner.margin=0.1"])
    assert config["epochs"] == 3 and config["optimizer"]["lr"] == 0.01 and config["split"] == "all"
    assert config["miner"] == {"name": "semi-hard", "margin": 0.1}


def test_set_component_name_resets_its_arguments_and_dotted_key_sets_one():
    config = resolve({"loss": {"name": "triplet", "margin": 0.5}}, ["loss=contrastive"])
    assert config["loss"] == {"name": "contrastive"}
    config = resolve({"loss": "contrastive"}, ["loss.neg_margin=2.0"])
    assert config["loss"] == {"name": "contrastive", "neg_margin": 2.0}


def test_set_errors():
    with pytest.raises(ConfigError, match="expected key=value"):
        resolve({}, ["epochs"])
    with pytest.raises(ConfigError, match="unknown config key 'lr'"):
        resolve({}, ["lr=0.1"])
    with pytest.raises(ConfigError, match="miner is not set"):
        resolve({}, ["miner.margin=0.1"])
    with pytest.raises(ConfigError, match="plain value"):
        resolve({}, ["epochs.x=1"])


def test_component_mapping_needs_a_name():
    with pytest.raises(ConfigError, match="loss: a mapping needs a 'name' key"):
        resolve({"loss": {"margin": 0.1}})


def test_load_reads_yaml_and_rejects_missing_or_non_mapping_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\nloss: contrastive\n")
    assert load(path, ["seed=5"])["seed"] == 5
    with pytest.raises(FileNotFoundError, match="no such file .*missing.yaml"):
        load(tmp_path / "missing.yaml")
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load(path)


@pytest.mark.parametrize("name", ["digits", "omniglot", "features"])
def test_shipped_configs_resolve(name):
    from pathlib import Path
    config = load(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    assert config["loss"]["name"] and config["model"]["name"]


def test_eval_select_names_a_validation_metric():
    for good in ("map_at_r", "precision_at_1", "recall_at_4", "ndcg_at_10", "map_at_100", "nmi", "f1"):
        assert resolve({}, [f"eval.select={good}"])["eval"]["select"] == good
    for bad in ("map@r", "recall_at_0", "num_queries", "map", 3):
        with pytest.raises(ConfigError, match="eval.select: expected a validation metric"):
            resolve({"eval": {"select": bad}})


def test_every_metric_of_a_validation_evaluate_can_be_selected():
    # SELECTABLE must follow deepmetric.evaluate's keys: flat and hierarchical labels, as validation calls it
    import torch

    import deepmetric as dm
    from deepmetric.training.config import SELECTABLE
    x, y = torch.randn(60, 4, generator=torch.Generator().manual_seed(0)), torch.arange(60) % 6
    for labels in (y, torch.stack([y % 2, y], 1)):
        metrics = dm.evaluate(x, labels)
        scores = [k for k, v in metrics.items() if isinstance(v, float) and k != "queries_without_relevant"]
        assert scores and all(SELECTABLE.fullmatch(k) for k in scores), scores


def test_exponents_without_a_dot_are_numbers_and_bad_numbers_are_named(tmp_path):
    # PyYAML (YAML 1.1) read 1e-3 as the string '1e-3'; the trainer then failed naming no key
    assert resolve({}, ["optimizer.lr=1e-3"])["optimizer"]["lr"] == 1e-3
    assert resolve({}, ["optimizer.lr=5E+2", "seed=7"])["optimizer"]["lr"] == 500.0
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  lr: 3e-4\nepochs: 2\n")
    assert load(path)["optimizer"]["lr"] == 3e-4
    for item, message in (("epochs=abc", "epochs: expected an integer >= 1, got 'abc'"),
                          ("epochs=-1", "epochs: expected an integer >= 1, got -1"),
                          ("seed=1.5", "seed: expected an integer >= 0, got 1.5"),
                          ("optimizer.lr=fast", "optimizer.lr: expected a finite number >= 0.0, got 'fast'"),
                          # a negative loss_lr made the proxies climb the loss; NaN passed every comparison
                          ("optimizer.loss_lr=-1", r"optimizer.loss_lr: expected a finite number >= 0.0 \(or null\), "
                                                   r"got -1"),
                          ("optimizer.gamma=.nan", "optimizer.gamma: expected a finite number >= 0.0, got nan"),
                          ("eval.val_classes=abc", "eval.val_classes: expected a finite number >= 0.0, got 'abc'"),
                          # these passed the config and failed after the data were loaded, or as a ZeroDivisionError
                          ("eval.val_classes=2", r"eval.val_classes: expected 0 \(no validation\) or a fraction of "
                                                 r"the training classes in \(0, 1\), got 2"),
                          ("sampler.m=0", "sampler.m: expected an integer >= 1, got 0"),
                          ("sampler.m=2.5", "sampler.m: expected an integer >= 1, got 2.5"),
                          ("sampler.classes_per_super_class=0", r"sampler.classes_per_super_class: expected an "
                                                                r"integer >= 1 \(or null\), got 0"),
                          # ignored settings: momentum under adam, a top-level miner or loss beside a loss list
                          ("optimizer.momentum=0.5", "optimizer.momentum: used by sgd only; adam has its own"),
                          ("miner=semi-hard", "losses: replaces loss and miner, so miner would be ignored"),
                          ("batch_size=true", "batch_size: expected an integer >= 1, got True"),
                          # eval.nmi is first used after the last epoch, so a bad value used to cost a whole run
                          ("eval.nmi=maybe", "eval.nmi: expected true or false, got 'maybe'"),
                          ("eval.exclude_groups=1", "eval.exclude_groups: expected true or false, or null, got 1")):
        with pytest.raises(ConfigError, match=message):
            resolve({"losses": ["triplet"]} if item.startswith("miner") else {}, [item])
    assert resolve({}, ["losses=[triplet]", "optimizer.loss_lr=0"])["optimizer"]["loss_lr"] == 0
    assert resolve({"losses": ["triplet"], "loss": None, "miner": None})["loss"] is None  # null: not set
    # a saved run's config predates these checks: read as it is (deepmetric evaluate of an older run)
    saved = {"losses": ["triplet"], "miner": "semi-hard", "optimizer": {"momentum": 0.5}}
    assert resolve(saved, strict=False)["miner"] == {"name": "semi-hard"}
    with pytest.raises(ConfigError, match=r"--set optimizer.lr=\[1: not valid YAML"):
        resolve({}, ["optimizer.lr=[1"])
    path.write_text("epochs: [2\n")
    with pytest.raises(ConfigError, match=f"config {path}: not valid YAML"):
        load(path)


def test_values_in_error_messages_are_cut_short(tmp_path):
    # YAML aliases let a small file hold a huge value; the message wrote out every repeated reference
    # (about 10x the time and memory per level of nesting)
    lines = ['  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    path = tmp_path / "bomb.yaml"
    path.write_text("model:\n  name: linear\n" + "\n".join(lines) + "\nepochs: *a6\n")
    with pytest.raises(ConfigError, match=r"epochs: expected an integer >= 1, got \[\[\[") as caught:
        load(path)
    assert len(str(caught.value)) < 300
