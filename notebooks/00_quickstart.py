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
# # Quickstart: from a trained CNN to a reusable module
#
# *Which parts of a CNN does one class need, and what do we gain by running only those?*
#
# This notebook walks the whole modtools path on the default data set (Fashion-MNIST):
# train a small CNN (cached by its config, so other notebooks reuse it), look at its per-class
# accuracy, build a module for one class with the **baseline modularizer** (keep each layer's
# kernels that are most active on that class; no search), extract it into a physically smaller
# network, save it as a module folder (`weights.safetensors` + `card.json`), load it back, and
# compare its size, MACs, latency and accuracy with the full model.
#
# The approaches of later notebooks (CNNSplitter, GradSplitter, MwT, SeaM) replace the baseline's
# choice of kernels with a search; everything else stays the same.

# %% tags=["parameters"]
profile = "quick"          # smoke | quick | paper (set by the runner)
dataset = "fashion-mnist"  # data set name (modtools.data.DATASET_NAMES)
arch = "simcnn"            # zoo architecture (modtools.models.list_models())
width = 0.25               # width multiplier of the architecture
per_class = 1000           # training images per class (None: all)
test_per_class = 300       # test images per class (None: all)
epochs = 4                 # training epochs
lr = 0.05                  # learning rate (SGD, momentum 0.9)
schedule = "cosine"        # cosine | step | constant
milestones = []            # epochs where a step schedule divides the lr by 10
augment = False            # random crop + flip while training
target_class = 0           # the class the module is built for
keep_fraction = 0.8        # fraction of kernels kept per layer in the module
sweep = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # kept fractions to compare
latency_repeats = 20       # timed repeats per latency measurement
precision = "fp32"         # fp32 | bf16 | auto (bf16 mixed precision where the device computes it fast; see the README)
seed = 0                   # every random choice flows from this seed
save_to_store = True  # also save the modules into the store (run_dir/../store) for the Module Foundry
device = "auto"            # auto | cpu | cuda
run_dir = "../runs/00_quickstart"  # results and modules go here
figures_dir = "../figures"         # figures go here

# %%
from pathlib import Path

import matplotlib.pyplot as plt

from modtools import foundry
from modtools import baseline as B
from modtools import plots
from modtools import train as T
from modtools.module import Module
from modtools.report import module_vs_model
from modtools.runner import current_parameters, write_results

NOTEBOOK = "00_quickstart"
params = current_parameters(globals(), NOTEBOOK)
run_dir = Path(run_dir)
device_used = str(T.resolve_device(device))

# %% [markdown]
# ## 1. Train (or load) the model
# A `ModelSpec` names the data, the architecture and the recipe; `train_cached` trains it once and
# keeps the weights under `runs/models/<arch>-<hash>/`.

# %%
spec = T.ModelSpec(arch=arch, width=width, dataset=dataset, per_class=per_class, test_per_class=test_per_class,
                   data_seed=seed, fit=T.FitConfig(precision=precision, epochs=epochs, lr=lr, schedule=schedule,
                                                   milestones=tuple(milestones), augment=augment, seed=seed))
data = T.spec_data(spec)
model, record = T.train_cached(spec, cache=run_dir.parent / "models", device=device, data=data)
report = T.evaluate(model, data.test, device=device)
print(f"{spec.key()}: test accuracy {report['accuracy']:.3f} "
      f"({'from the cache' if record['cached'] else 'trained in %.0f s' % record['train_seconds']})")
fig, ax = plt.subplots(figsize=(7, 3))
plots.per_class_bars(ax, report["per_class"], "per-class test accuracy of the full model")

# %% [markdown]
# ## 2. A module for one class
# Kernel importance is computed for all classes in one pass over the training data. The module keeps
# the top `keep_fraction` of kernels per layer for the target class; its head is a logistic detector
# ("is it this class?") trained on the module's cached outputs.

# %%
importance = B.kernel_importance(model, data.train, device=device)
cfg = B.BaselineConfig(keep_fraction=keep_fraction, head="logistic", seed=seed)
module = B.baseline_module(model, data.train, [target_class], cfg, importance=importance, device=device)
folder = module.save(run_dir / "modules" / module.name)
if save_to_store:
    foundry.save_to_store(module, run_dir, data, spec.key(), device)
reloaded = Module.load(folder, model=model)
print(f"saved {folder} and loaded it back; kernels kept: {reloaded.card()['kernel_retention']:.1%}")

# %% [markdown]
# ## 3. Module against the full model
# The module is compared on a balanced "class vs rest" test task with the full model answering
# "is the argmax this class?". Latency is the median of repeated CPU forward passes.

# %%
comparison = module_vs_model(model, reloaded, data.test, latency_repeats=latency_repeats, device=device)
rows = []
for keep in sweep:
    m = B.baseline_module(model, data.train, [target_class], B.BaselineConfig(keep_fraction=keep, head="logistic",
                                                                             seed=seed), importance=importance,
                          device=device)
    c = module_vs_model(model, m, data.test, batch_sizes=(), device=device)
    rows.append({"keep_fraction": keep, "accuracy_module": c["module"]["accuracy"],
                 "macs_ratio": c["ratios"]["macs"], "params_ratio": c["ratios"]["params"]})

# %%
results = {
    "arch": arch, "dataset": dataset, "target_class": target_class,
    "target_name": data.train.class_names[target_class], "keep_fraction": keep_fraction,
    "accuracy_model": report["accuracy"], "per_class_model": report["per_class"],
    "accuracy_module": comparison["module"]["accuracy"], "accuracy_model_on_task": comparison["model"]["accuracy"],
    "kernel_retention": reloaded.card()["kernel_retention"], "macs_ratio": comparison["ratios"]["macs"],
    "params_ratio": comparison["ratios"]["params"], "latency_ratio_b64": comparison["ratios"]["latency_b64"],
    "latency_ratio_b1": comparison["ratios"]["latency_b1"], "comparison": comparison, "sweep": rows,
    "model_key": spec.key(), "train_seconds": record["train_seconds"], "module_folder": str(folder),
}
write_results(run_dir, NOTEBOOK, params, results, device=device_used, seed=seed)
fig = plots.quickstart_figure(results)
plots.save_figure(fig, figures_dir, NOTEBOOK, "module_vs_model")
