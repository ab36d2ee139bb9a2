# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Every approach on the same model, data and sub-tasks
#
# *For my model and my sub-task, which approach gives the smallest, fastest, most accurate module,
# and what does it cost to obtain it?*
#
# No published tool compares these approaches side by side. Here one trained plain network and one
# residual network (the models of `10_train_models`, from the cache) are taken apart for two
# sub-tasks, one class and a group of classes, by every registered approach: the no-search
# importance baseline, CNNSplitter, GradSplitter, SeaM, and MwT (which trains its own modular model
# on the same data and budget). Each row gives the module's accuracy on the sub-task, its loss
# against the standard model, KRR (WRR for SeaM), MACs and parameters of the extracted module,
# the measured latency ratio, and the wall time to obtain the module.
#
# The approaches start from the registry's quick CPU settings (`modtools.approaches`); GradSplitter,
# CNNSplitter and SeaM use the fast schedules of notebooks 30, 20 and 50 (`approach_params`), on a
# capped search set (`search_per_class`, `val_per_class`, per approach where given, and per
# architecture in `arch_params`: the residual network's GradSplitter search sees 100 training and 50
# validation images per class, a third of the plain network's, to keep the main job within its
# 30 minutes; the plain network's must match notebook 30's to reuse it). This is what
# each gives in a few minutes of CPU, not its published quality (the approach notebooks 20-52 show
# that), computing in bf16 mixed precision where the CPU has it (`approach_precision`; the models and
# every reported number stay float32). A search that another notebook already ran the same way in
# float32 is reused rather than redone in bf16 (the plain network's GradSplitter search is the one of
# `30_gradsplitter_modularize`); each row's `compute_precision` says which precision its module came
# from, and a reused search's seconds are counted at their original cost. GradSplitter and
# CNNSplitter search once per model for every class; both sub-tasks use that search, and its seconds
# are counted in both rows. MwT's seconds include training its own model.
#
# **How to read it.** For one class, every module is a detector: its "class vs a balanced sample of
# the rest" accuracy is compared with the standard model's argmax on the same images. For a group,
# GradSplitter's and CNNSplitter's per-class modules run side by side (the argmax of their scores),
# so their MACs are the sum of the group's modules and can exceed the model's; MwT, SeaM and the
# baseline give one module for the whole group. SeaM's zeroed weights save no dense MACs or time
# (see 51); its MACs ratio stays near 1.

# %% tags=["parameters"]
profile = "quick"          # smoke | quick | paper (set by the runner)
dataset = "fashion-mnist"  # data set name (modtools.data.DATASET_NAMES)
archs = ["simcnn", "rescnn"]  # one plain and one residual network
width = 0.25               # width multiplier for every architecture ...
width_overrides = {}       # ... except these (architecture to width)
per_class = 1000           # training images per class (None: all)
test_per_class = 300       # test images per class (None: all)
epochs = 4                 # training epochs of the standard models (and of MwT); 10_train_models trains the same ones
lr = 0.05                  # learning rate (SGD, momentum 0.9)
schedule = "cosine"        # cosine | step | constant
milestones = []            # epochs where a step schedule divides the lr by 10
augment = False            # random crop + flip while training
tasks = [[2], [0, 2, 4, 6]]  # sub-tasks: one class (class vs rest) and a group of classes
approaches = ["baseline", "cnnsplitter", "gradsplitter", "mwt", "seam"]  # registered approaches to compare
approach_params = {"baseline": {"keep_fraction": 0.75}, "cnnsplitter": {"val_per_class": 20}, "gradsplitter": {"first_head_epochs": 3, "cycle_epochs": 12, "cycle_mask": 3, "cycle_head": 1, "init": "value", "init_value": 0.05, "lr_mask": 0.0015, "lr_head": 0.05, "lr_head_later": 0.005, "alpha": 0.5, "select": "per_module", "seed": 0, "search_per_class": 300, "val_per_class": 100}, "seam": {"epochs": 10, "lr_mask": 0.1, "alpha": 3.0, "steps_per_epoch": 20}}  # per approach, overrides of the base settings and its own search_per_class or val_per_class (the schedules of notebooks 20, 30 and 50)
arch_params = {"rescnn": {"gradsplitter": {"search_per_class": 100, "val_per_class": 50}}}  # per architecture, overrides of approach_params for it only
quick_settings = True      # start from the registry quick CPU settings (False: each config default)
search_per_class = 100     # training images per class the searches see (None: all)
val_per_class = 50         # validation images per class that score the searches (None: all)
latency_repeats = 20       # timed rounds (module and model alternately) per latency ratio
precision = "fp32"         # fp32 | bf16 | auto: training of the models (fp32 shares those of 10_train_models; see the README)
approach_precision = "auto"  # fp32 | bf16 | auto: every approach searches and trains in this (None: as the models)
seed = 0                   # every random choice flows from this seed
device = "auto"            # auto | cpu | cuda
run_dir = "../runs/60_compare_approaches"  # results go here
figures_dir = "../figures"                 # figures go here

# %%
from pathlib import Path

from modtools import plots
from modtools import train as T
from modtools.compare import CompareConfig, best_by, compare_row
from modtools.runner import config_from, current_parameters, write_results

NOTEBOOK = "60_compare_approaches"
params = current_parameters(globals(), NOTEBOOK)
run_dir = Path(run_dir)
cache = run_dir.parent / "models"
cfg = config_from(CompareConfig, params)
cfg.check_archs(archs)
device_used = str(T.resolve_device(device))

# %% [markdown]
# ## The models, and every approach on every sub-task

# %%
rows, models, memo = [], {}, {}
for arch in archs:
    spec = T.ModelSpec(arch=arch, width=width_overrides.get(arch, width), dataset=dataset, per_class=per_class,
                       test_per_class=test_per_class, data_seed=seed,
                       fit=T.FitConfig(precision=precision, epochs=epochs, lr=lr, schedule=schedule, milestones=tuple(milestones),
                                       augment=augment, seed=seed))
    data = T.spec_data(spec)
    model, record = T.train_cached(spec, cache=cache, device=device, data=data)
    models[arch] = {"key": spec.key(), "test_accuracy": record["test_accuracy"], "train_seconds": record["train_seconds"]}
    for classes in tasks:
        for approach in approaches:
            row = compare_row(approach, arch, model, data, classes, spec, cache, cfg, device, memo)
            rows.append(row)
            shown = "n/a" if row["accuracy"] is None else (
                f"accuracy {row['accuracy']:.3f} (standard {row['accuracy_standard']:.3f}), "
                f"{row['retention_kind']} {row['retention']:.2f}, MACs {row['macs_ratio']:.2f}, "
                f"latency {row['latency_ratio']:.2f}, {row['seconds_to_module']:.0f} s")
            print(f"{arch:9s} {'+'.join(row['class_names']):28s} {approach:13s} {shown}", flush=True)

# %% [markdown]
# ## The table

# %%
import pandas as pd

table = pd.DataFrame([{k: r.get(k) for k in ("arch", "task", "approach", "accuracy", "accuracy_loss", "retention_kind",
                                             "retention", "macs_ratio", "params_ratio", "latency_ratio",
                                             "seconds_to_module")} for r in rows])
table.round(3)

# %% [markdown]
# ## Accuracy against MACs, marker size the cost to obtain the module

# %%
results = {"rows": rows, "models": models, "tasks": tasks, "approaches": approaches,
           "best_accuracy": {f"{a}:{'+'.join(map(str, c))}": v for (a, c), v in best_by(rows, "accuracy_loss").items()},
           "smallest": {f"{a}:{'+'.join(map(str, c))}": v for (a, c), v in best_by(rows, "macs_ratio").items()},
           "cheapest": {f"{a}:{'+'.join(map(str, c))}": v for (a, c), v in best_by(rows, "seconds_to_module").items()}}
write_results(run_dir, NOTEBOOK, params, results, device=device_used, seed=seed)
fig = plots.comparison_figure(rows)
plots.save_figure(fig, figures_dir, NOTEBOOK, "accuracy_vs_macs");
