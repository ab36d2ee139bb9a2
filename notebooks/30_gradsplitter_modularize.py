# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
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
# The quick profile searches on a subset of the training data with masks that start near the
# decision boundary, a larger head learning rate and shorter cycles (a faster schedule than the
# published one, which the `paper` profile uses), and selects within 5 points of the model. In
# code, `G.GradSplitterConfig.preset("paper")` and `G.GradSplitterConfig.preset("fast")` give the
# published schedule and the toolkit's benchmarked faster one (`make bench` compares them).

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
search_per_class = 100     # training images per class used by the search (None: all)
search_val_per_class = 50  # validation images per class used to select the epoch (None: all)
first_head_epochs = 5      # head-only epochs before the cycles (published: 5)
cycle_epochs = 9           # epochs of mask/head cycles (published: 140)
cycle_mask = 3             # mask epochs per cycle (published: 5)
cycle_head = 1             # head epochs per cycle (published: 2)
init = "value"             # mask initialisation: ones | value | normal (published: ones)
init_value = 0.05          # initial score when init is "value"
lr_mask = 0.002            # Adam lr in mask phases (published: 0.001)
lr_head = 0.05             # Adam lr of the first head phase (published: 0.01)
alpha = 0.1                # weight of the kept-kernel rate
select_tolerance = 0.05    # selection: fewest kernels within this of the model (published rule: 0.01)
batch_size = 64            # search batch size
seed = 0                   # every random choice flows from this seed
device = "auto"            # auto | cpu | cuda
run_dir = "../runs/30_gradsplitter_modularize"  # results and modules go here
figures_dir = "../figures"                       # figures go here

# %%
from pathlib import Path

from modtools import data as D
from modtools import gradsplitter as G
from modtools import gradsplitter_plots, plots
from modtools import train as T
from modtools.runner import current_parameters, write_results

NOTEBOOK = "30_gradsplitter_modularize"
params = current_parameters(globals(), NOTEBOOK)
spec = T.ModelSpec(arch=arch, width=width, dataset=dataset, per_class=per_class, test_per_class=test_per_class,
                   data_seed=seed, fit=T.FitConfig(epochs=epochs, lr=lr, schedule=schedule,
                                                   milestones=tuple(milestones), augment=augment, seed=seed))
data = T.spec_data(spec)
model, record = T.train_cached(spec, cache=Path(run_dir).parent / "models", device=device, data=data)
search_train = D.limit_per_class(data.train, search_per_class, seed=seed)
search_val = D.limit_per_class(data.val, search_val_per_class, seed=seed)
cfg = G.GradSplitterConfig(first_head_epochs=first_head_epochs, cycle_epochs=cycle_epochs, cycle_mask=cycle_mask,
                           cycle_head=cycle_head, init=init, init_value=init_value, lr_mask=lr_mask,
                           lr_head=lr_head, alpha=alpha, batch_size=batch_size, select_tolerance=select_tolerance,
                           seed=seed, schedule=profile)

# %% [markdown]
# ## Search the masks (all modules in one batched pass)

# %%
result = G.decompose(model, search_train, search_val, cfg, device=device, progress=True)
print(f"{len(result.history)} epochs in {result.seconds:.0f} s; selected epoch {result.selected_epoch}")

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
kept_by_layer = {name: result.masks[name].float().mean(1).tolist() for name in result.layers}

# %%
results = {
    "arch": arch, "dataset": dataset, "krr_mean": report["krr_mean"], "accuracy_model": report["accuracy_model"],
    "accuracy_composed_modules": report["accuracy_composed_modules"], "accuracy_loss": report["accuracy_loss"],
    "per_module": report["per_module"], "history": result.history, "selected_epoch": result.selected_epoch,
    "model_val_accuracy": result.model_val_accuracy, "search_seconds": result.seconds,
    "kept_by_layer": kept_by_layer, "class_names": data.train.class_names, "module_folders": folders,
    "config": result.config,
}
write_results(run_dir, NOTEBOOK, params, results, device=str(T.resolve_device(device)), seed=seed)
plots.save_figure(gradsplitter_plots.search_figure(results), figures_dir, NOTEBOOK, "search")
plots.save_figure(gradsplitter_plots.kept_kernels_figure(results), figures_dir, NOTEBOOK, "kept_kernels")
plots.save_figure(gradsplitter_plots.module_quality_figure(results), figures_dir, NOTEBOOK, "modules")
