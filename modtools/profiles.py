"""Parameter values of each notebook under each profile.

* ``smoke``: seconds, on the synthetic data set, for tests.
* ``quick``: the notebooks' own defaults (a 2-core CPU in minutes, on Fashion-MNIST); empty here.
* ``paper``: the published settings (CIFAR-10, full widths and schedules), for a GPU.

Every name must be a parameter of its notebook; the runner checks that before a kernel starts.
"""
from __future__ import annotations

_SMOKE_DATA = {"dataset": "synthetic", "per_class": None, "test_per_class": None}

PROFILE_VALUES: dict[str, dict[str, dict]] = {
    "00_quickstart": {
        "smoke": {**_SMOKE_DATA, "width": 0.125, "epochs": 1, "sweep": [0.5, 1.0], "latency_repeats": 2},
        "quick": {},
        "paper": {"dataset": "cifar10", "width": 1.0, "per_class": None, "test_per_class": None, "epochs": 200,
                  "lr": 0.01, "schedule": "step", "milestones": [60, 120], "augment": True},
    },
    "10_train_models": {
        "smoke": {**_SMOKE_DATA, "archs": ["simcnn", "resnet20"], "width": 0.125, "epochs": 1},
        "quick": {},
        "paper": {"dataset": "cifar10", "archs": ["simcnn", "rescnn", "incecnn", "vgg16", "resnet18", "resnet20"],
                  "width": 1.0, "per_class": None, "test_per_class": None, "epochs": 200, "lr": 0.01,
                  "schedule": "step", "milestones": [60, 120], "augment": True},
    },
}

PROFILE_VALUES["30_gradsplitter_modularize"] = {
    "smoke": {**_SMOKE_DATA, "width": 0.125, "epochs": 1, "search_per_class": None, "search_val_per_class": None,
              "first_head_epochs": 1, "cycle_epochs": 3, "cycle_mask": 2, "cycle_head": 1, "batch_size": 32},
    "quick": {},
    "paper": {"dataset": "cifar10", "width": 1.0, "per_class": None, "test_per_class": None, "epochs": 200,
              "lr": 0.01, "schedule": "step", "milestones": [60, 120], "augment": True, "search_per_class": None, "search_val_per_class": None, "first_head_epochs": 5, "cycle_epochs": 140,
              "cycle_mask": 5, "cycle_head": 2, "init": "ones", "lr_mask": 0.001, "lr_head": 0.01,
              "lr_head_later": 0.001, "alpha": 0.1, "batch_size": 64, "select": "composed", "select_tolerance": 0.01,
              "refit_head_epochs": 0},
}

PROFILE_VALUES["31_gradsplitter_compose"] = {
    "smoke": {**_SMOKE_DATA, "width": 0.125, "n_models": 2, "epochs": 1, "search_per_class": None,
              "search_val_per_class": None, "first_head_epochs": 1, "cycle_epochs": 3, "cycle_mask": 2,
              "cycle_head": 1, "batch_size": 32, "dirichlet_alpha": 5.0},
    "quick": {},
    "paper": {"dataset": "cifar10", "width": 1.0, "n_models": 10, "per_class": None, "test_per_class": None,
              "epochs": 200, "lr": 0.01, "schedule": "step", "milestones": [60, 120], "augment": True,
              "search_per_class": None, "search_val_per_class": None, "first_head_epochs": 5, "cycle_epochs": 140,
              "cycle_mask": 5, "cycle_head": 2, "init": "ones", "lr_mask": 0.001, "lr_head": 0.01, "alpha": 0.1,
              "lr_head_later": 0.001, "select": "composed", "select_tolerance": 0.01, "refit_head_epochs": 0,
              "compose_refit_epochs": 0},
}

PROFILE_VALUES["32_gradsplitter_new_task"] = {
    "smoke": {"source_a": "digits", "source_b": "digits", "tasks": [[[0, 1], [3, 5]]], "width": 0.125,
              "per_class": 20, "test_per_class": 10, "epochs": 1, "search_per_class": 10, "search_val_per_class": None,
              "first_head_epochs": 1, "cycle_epochs": 3, "cycle_mask": 2, "cycle_head": 1, "batch_size": 32},
    "quick": {},
    "paper": {"source_a": "cifar10", "source_b": "svhn", "tasks": [[[0, 1, 2], [3, 5, 8]], [[3, 5], [0, 1, 2, 9]]],
              "width": 1.0, "per_class": None, "test_per_class": None, "epochs": 200, "lr": 0.01, "schedule": "step",
              "milestones": [60, 120], "augment": True, "search_per_class": None, "search_val_per_class": None,
              "first_head_epochs": 5, "cycle_epochs": 140, "cycle_mask": 5, "cycle_head": 2, "init": "ones",
              "lr_mask": 0.001, "lr_head": 0.01, "alpha": 0.1, "lr_head_later": 0.001, "select": "composed",
              "select_tolerance": 0.01, "refit_head_epochs": 0, "compose_refit_epochs": 0},
}

_MWT_SMOKE = {**_SMOKE_DATA, "arch": "resnet20", "width": 0.25, "epochs": 1, "batch_size": 16, "augment": False}
_MWT_PAPER = {"dataset": "cifar10", "arch": "resnet18", "width": 1.0, "per_class": None, "test_per_class": None,
              "epochs": 200, "batch_size": 128, "augment": True, "alpha": 0.5, "beta": 1.5, "init_from": "scratch"}
PROFILE_VALUES.update({
    "40_mwt_modular_training": {"smoke": _MWT_SMOKE, "quick": {}, "paper": _MWT_PAPER},
    "41_mwt_threshold_sweep": {
        "smoke": {**_MWT_SMOKE, "thresholds": [0.3, 0.9], "finetune_epochs": 1},
        "quick": {},
        "paper": {**_MWT_PAPER, "finetune_epochs": 10, "thresholds": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]},
    },
    "42_mwt_subtask_reuse": {
        "smoke": {**_MWT_SMOKE, "subtasks": [[0, 1], [1, 2, 3]], "finetune_epochs": 1, "latency_repeats": 2},
        "quick": {},
        "paper": {**_MWT_PAPER, "finetune_epochs": 10},
    },
})


_SEAM_SMOKE = {**_SMOKE_DATA, "width": 0.25, "model_epochs": 1, "epochs": 2, "batch_size": 16, "init_value": 0.5,
               "lr_mask": 0.2}
_SEAM_PAPER = {"dataset": "cifar10", "arch": "resnet20", "width": 1.0, "per_class": None, "test_per_class": None,
               "model_epochs": 200, "epochs": 300, "init_value": 1.0, "augment": True, "steps_per_epoch": None,
               "lr_head": 0.1, "head_every": 5, "batch_size": 64}
PROFILE_VALUES.update({
    "50_seam_binary": {
        "smoke": {**_SEAM_SMOKE, "target_classes": [0, 1]},
        "quick": {},
        "paper": {**_SEAM_PAPER, "lr_mask": 0.05, "alpha": 1.0},
    },
    "51_seam_multiclass": {
        "smoke": {**_SEAM_SMOKE, "groups": [[0, 1], [2, 3]], "latency_repeats": 2},
        "quick": {},
        "paper": {**_SEAM_PAPER, "dataset": "cifar100", "groups": ["fish", "flowers", "vehicles_1", "people"],
                  "lr_mask": 0.10, "alpha": 2.0, "select_tolerance": 0.0},
    },
    "52_seam_defect_inheritance": {
        "smoke": {"source": "digits", "target": "digits", "width": 0.25, "per_class": 40, "test_per_class": 20,
                  "model_epochs": 1, "thresholds": [0.3], "finetune_epochs": 1, "probe_epochs": 1,
                  "max_reengineer_epochs": 2, "attack_steps": 2},
        "quick": {},
        # the published setting: torchvision's ImageNet ResNet-18 reused on a folder of images (pass
        # -p target folder:PATH); eps and step are the published 0.1 / 0.01 in normalised input space,
        # times ImageNet's mean std (0.226) in [0, 1] space; fixed epochs where the original stops early
        "paper": {"source": "imagenet", "target": "folder:transfer", "arch": "tv:resnet18", "width": 1.0,
                  "thresholds": [0.3, 0.4, 0.5, 0.6, 0.7], "finetune_epochs": 100, "finetune_lr": 0.005,
                  "probe_epochs": 30, "probe_lr": 0.1, "lr_mask": 0.05, "alpha": 0.5, "init_value": 1.0,
                  "max_reengineer_epochs": 300, "eps": 0.0226, "attack_steps": 40, "attack_step_size": 0.00226},
    },
})

_CS_SMOKE = {**_SMOKE_DATA, "width": 0.125, "epochs": 1, "search_val_per_class": 2, "select_val_per_class": 1, "population": 4,
             "generations": 1, "parents_mating": 2, "keep_parents": 1, "keep_min": 2, "keep_max": 10,
             "sensitivity_grid": [0.5, 1.0]}
_CS_PAPER = {"dataset": "cifar10", "width": 1.0, "per_class": None, "test_per_class": None, "epochs": 200,
             "lr": 0.01, "augment": True, "search_val_per_class": None, "select_val_per_class": None, "population": 100, "generations": 200,
             "parents_mating": 50, "keep_parents": 20, "mutation_percent": 5.0, "alpha": 0.9, "gamma": 0.9,
             "keep_min": 50, "keep_max": 500, "confidence": 0.9, "confidence_fallback": "raise",
             "sensitivity_grid": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "sensitivity_tolerance": 0.01}
PROFILE_VALUES.update({
    "20_cnnsplitter_modularize": {"smoke": _CS_SMOKE, "quick": {}, "paper": _CS_PAPER},
    "21_cnnsplitter_patching": {
        "smoke": {**_CS_SMOKE, "target_classes": [3], "task_classes": [0, 1], "weak_per_class": 10,
                  "simple_width": 0.0625, "simple_epochs": 1, "overfit_epochs": 2, "underfit_epochs": 1, "gs_search_per_class": None,
                  "gs_cycle_epochs": 2},
        "quick": {},
        # the paper mixes CIFAR-100 classes with one CIFAR-10 TC; here the weak tasks are CIFAR-10 classes
        "paper": {**_CS_PAPER, "target_classes": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "task_classes": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                  "weak_per_class": 400, "weak_batch_size": 128, "calibration": "minmax", "simple_width": 1.0, "simple_epochs": 100,
                  "simple_lr": 0.01, "overfit_epochs": 200, "underfit_epochs": 20, "weak_lr": 0.01, "gs_search_per_class": None, "gs_cycle_epochs": 140,
                  "gs_init_value": 1.0, "gs_lr_mask": 0.001, "gs_alpha": 0.1},
    },
    "60_compare_approaches": {
        "smoke": {**_SMOKE_DATA, "archs": ["simcnn", "rescnn"], "width": 0.125, "epochs": 3,
                  "tasks": [[1], [0, 1, 2]], "search_per_class": None, "val_per_class": None, "latency_repeats": 2,
                  "approach_params": {"baseline": {"keep_fraction": 0.75}, "gradsplitter": {"val_per_class": 10}}},
        "quick": {},
        "paper": {"dataset": "cifar10", "width": 1.0, "per_class": None, "test_per_class": None, "epochs": 200,
                  "lr": 0.01, "schedule": "step", "milestones": [60, 120], "augment": True, "search_per_class": None,
                  "val_per_class": None, "quick_settings": False, "approach_params": {}, "arch_params": {},   # as published
                  "approach_precision": "fp32"},
    },
    "90_module_foundry": {
        "smoke": {"demo": True, "poll": 0.2},
        "quick": {},
        "paper": {},
    },
})

# The published settings compute in float32 (the quick profile uses "auto" in 32 and for 60's approaches).
for _notebook, _values in PROFILE_VALUES.items():
    if _notebook != "90_module_foundry" and "paper" in _values:
        _values["paper"] = {**_values["paper"], "precision": "fp32"}

#: The config dataclasses each notebook builds from its parameters (same field names); the runner
#: builds them before a kernel starts so that their range checks reject bad values early.
NOTEBOOK_CONFIGS: dict[str, list[str]] = {
    "00_quickstart": ["modtools.train:FitConfig", "modtools.baseline:BaselineConfig"],
    "10_train_models": ["modtools.train:FitConfig"],
    "20_cnnsplitter_modularize": ["modtools.train:FitConfig", "modtools.cnnsplitter:CNNSplitterConfig"],
    "21_cnnsplitter_patching": ["modtools.train:FitConfig", "modtools.cnnsplitter:CNNSplitterConfig"],
    "30_gradsplitter_modularize": ["modtools.train:FitConfig", "modtools.gradsplitter:GradSplitterConfig"],
    "31_gradsplitter_compose": ["modtools.train:FitConfig", "modtools.gradsplitter:GradSplitterConfig"],
    "32_gradsplitter_new_task": ["modtools.train:FitConfig", "modtools.gradsplitter:GradSplitterConfig"],
    "40_mwt_modular_training": ["modtools.mwt:MwTConfig"],
    "41_mwt_threshold_sweep": ["modtools.mwt:MwTConfig"],
    "42_mwt_subtask_reuse": ["modtools.mwt:MwTConfig"],
    "50_seam_binary": ["modtools.seam:SeaMConfig"],
    "51_seam_multiclass": ["modtools.seam:SeaMConfig"],
    "52_seam_defect_inheritance": ["modtools.seam_defects:DefectConfig"],
    "60_compare_approaches": ["modtools.train:FitConfig", "modtools.compare:CompareConfig"],
}

#: Parameters holding class ids: name → the data set parameter they index (a pair of data set
#: parameters for tasks that mix two sources, ``[[classes of a], [classes of b]]`` per task).
CLASS_PARAMETERS: dict[str, dict] = {
    "00_quickstart": {"target_class": "dataset"},
    "21_cnnsplitter_patching": {"target_classes": "dataset", "task_classes": "dataset"},
    "32_gradsplitter_new_task": {"tasks": ("source_a", "source_b")},
    "42_mwt_subtask_reuse": {"subtasks": "dataset"},
    "50_seam_binary": {"target_classes": "dataset"},
    "60_compare_approaches": {"tasks": "dataset"},
}


def profile_parameters(notebook: str, profile: str) -> dict:
    """The values ``profile`` sets for ``notebook`` (empty for ``quick`` and unknown notebooks)."""
    return dict(PROFILE_VALUES.get(notebook, {}).get(profile, {}))
