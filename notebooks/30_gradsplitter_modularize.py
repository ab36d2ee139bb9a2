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
# # GradSplitter: decompose a CNN into per-class modules
#
# *Can gradient descent on kernel masks split a trained N-class CNN into N small modules, one
# per class, that together classify as well as the model?*
#
# GradSplitter gives every module a real-valued score per kernel (hard step forward, clipped
# straight-through gradient) and a small head that turns the logits into one score "is it my
# class?". The N scores are trained jointly with cross-entropy plus a penalty on the kept-kernel
# rate, alternating head-only and mask phases; the CNN stays frozen. All N modules run in one
# batched pass, head phases train on cached features, and the epoch is selected on a validation
# split: the fewest kernels within one point of the model's validation accuracy.
#
# The quick profile searches on a subset of the training data (300 images per class) with masks
# that start near the decision boundary, larger head learning rates and shorter cycles (a faster
# schedule than the published one, which the `paper` profile uses). Measured on this model: 150
# images per class at a mask lr of 0.003 give KRR 0.58 at a 1.6 pt loss, 300 at 0.003 KRR 0.60 at
# 2.2 pt (the masks shrink faster than the heads follow), 300 at 0.0015 KRR 0.54 at 0.8 pt.
#
# Two choices of the toolkit differ from the published rule, and the `paper` profile switches both
# back:
#
# * **each module keeps its own epoch** (`select = "per_module"`): the masks are per module anyway,
#   so starting from the epoch the published rule picks, every module moves to its smallest epoch as
#   long as the composed validation accuracy stays within `select_tolerance` of the model's (the
#   published rule, `"composed"`, takes one epoch for all ten; "easy" classes then keep as many
#   kernels as the hardest one needs);
# * later head phases learn faster (`lr_head_later`), so the heads follow the shrinking masks.
#
# `refit_head_epochs` can re-fit the heads on the selected masks afterwards (kept only when the
# composed validation accuracy does not fall). In code, `G.GradSplitterConfig.preset("paper")` and
# `G.GradSplitterConfig.preset("fast")` give the published schedule and the toolkit's benchmarked
# faster one (`make bench` compares them). Selection only ever reads the validation split.

# %% tags=["parameters"]
profile = "quick"          # smoke | quick | paper (set by the runner)
dataset = "fashion-mnist"  # data set name
arch = "simcnn"            # zoo architecture of the trained model
width = 0.25               # width multiplier
per_class = 1000           # training images per class of the model (None: all)
test_per_class = 300       # test images per class (None: all)
epochs = 4                 # training epochs of the model (shared with 00/10 through the cache)
lr = 0.05                  # learning rate of the model (SGD, momentum 0.9)
schedule = "cosine"        # cosine | step | constant
milestones = []            # epochs where a step schedule divides the lr by 10
augment = False            # random crop + flip while training the model
search_per_class = 300     # training images per class used by the search (None: all)
search_val_per_class = 100 # validation images per class used to select the epochs (None: all)
first_head_epochs = 3      # head-only epochs before the cycles (published: 5)
cycle_epochs = 12          # epochs of mask/head cycles (published: 140)
cycle_mask = 3             # mask epochs per cycle (published: 5)
cycle_head = 1             # head epochs per cycle (published: 2)
init = "value"             # mask initialisation: ones | value | normal (published: ones)
init_value = 0.05          # initial score when init is "value"
lr_mask = 0.0015           # Adam lr in mask phases (published: 0.001)
lr_head = 0.05             # Adam lr of the first head phase (published: 0.01)
lr_head_later = 0.005      # Adam lr of later head phases (published: 0.1 x lr_head)
alpha = 0.5                # weight of the kept-kernel rate (published: 0.1)
select = "per_module"      # per_module: each module its own epoch | composed: one epoch for all (published)
select_tolerance = 0.01    # selection: fewest kernels within this of the model's validation accuracy (published: 0.01)
refit_head_epochs = 0      # re-fit the heads on the selected masks (0: no, as published)
refit_lr = 0.01            # Adam lr of that re-fit
batch_size = 64            # search batch size
precision = "fp32"         # fp32 | bf16 | auto (bf16 mixed precision where the device computes it fast; see the README)
seed = 0                   # every random choice flows from this seed
save_to_store = True  # also save the modules into the store (run_dir/../store) for the Module Foundry
device = "auto"            # auto | cpu | cuda
run_dir = "../runs/30_gradsplitter_modularize"  # results and modules go here
figures_dir = "../figures"                       # figures go here

# %%
from pathlib import Path

from modtools import foundry
from modtools import data as D
from modtools import gradsplitter as G
from modtools import gradsplitter_plots, plots
from modtools import train as T
from modtools.runner import config_from, current_parameters, write_results

NOTEBOOK = "30_gradsplitter_modularize"
params = current_parameters(globals(), NOTEBOOK)
spec = T.ModelSpec(arch=arch, width=width, dataset=dataset, per_class=per_class, test_per_class=test_per_class,
                   data_seed=seed, fit=T.FitConfig(precision=precision, epochs=epochs, lr=lr, schedule=schedule,
                                                   milestones=tuple(milestones), augment=augment, seed=seed))
data = T.spec_data(spec)
model, record = T.train_cached(spec, cache=Path(run_dir).parent / "models", device=device, data=data)
search_train = D.limit_per_class(data.train, search_per_class, seed=seed)
search_val = D.limit_per_class(data.val, search_val_per_class, seed=seed)
cfg = config_from(G.GradSplitterConfig, params, schedule=profile)

# %% [markdown]
# ## Search the masks (all modules in one batched pass)

# %%
# the search is cached with the model: a later run with the same model, data and settings reuses it
result = G.decompose(model, search_train, search_val, cfg, device=device, progress=True,
                     cache=Path(run_dir).parent / "models")
print(f"{len(result.history)} epochs in {result.seconds:.0f} s; published rule's epoch {result.selected_epoch}, "
      f"each module's epoch {result.selected_epochs}, composed validation accuracy {result.val_accuracy:.3f} "
      f"(model {result.model_val_accuracy:.3f})")

# %% [markdown]
# ## Evaluate and save the modules
# Each module is a detector of its class (score > 0.5) evaluated on the validation split; composing
# all N modules (argmax of their scores) is compared with the model on the test split.

# %%
report = G.evaluate_modules(model, result, data.val, data.test, device=device)
folders = []
for c in range(data.train.num_classes):
    metrics = {k: v for k, v in report["per_module"][c].items() if k in ("precision", "recall", "f1", "krr")}
    module = G.to_module(model.cpu(), result, c, data.train, metrics=metrics,
                         lineage=[{"step": "model", "spec": spec.key()}, {"step": "gradsplitter search"}])
    folders.append(str(module.save(Path(run_dir) / "modules" / module.name)))
    if save_to_store:
        foundry.save_to_store(module, run_dir, data, spec.key(), device)
kept_by_layer = {name: result.masks[name].float().mean(1).tolist() for name in result.layers}

# %%
results = {
    "arch": arch, "dataset": dataset, "krr_mean": report["krr_mean"], "accuracy_model": report["accuracy_model"],
    "accuracy_composed_modules": report["accuracy_composed_modules"], "accuracy_loss": report["accuracy_loss"],
    "per_module": report["per_module"], "history": result.history, "selected_epoch": result.selected_epoch,
    "selected_epochs": result.selected_epochs, "val_accuracy_composed": result.val_accuracy, "refit": result.refit,
    "model_val_accuracy": result.model_val_accuracy, "search_seconds": result.seconds,
    "kept_by_layer": kept_by_layer, "class_names": data.train.class_names, "module_folders": folders,
    "config": result.config,
}
write_results(run_dir, NOTEBOOK, params, results, device=str(T.resolve_device(device)), seed=seed)
plots.save_figure(gradsplitter_plots.search_figure(results), figures_dir, NOTEBOOK, "search")
plots.save_figure(gradsplitter_plots.kept_kernels_figure(results), figures_dir, NOTEBOOK, "kept_kernels")
plots.save_figure(gradsplitter_plots.module_quality_figure(results), figures_dir, NOTEBOOK, "modules")
