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
# # MwT: the threshold θ
#
# *How does the threshold that cuts modules trade kernel retention against cohesion, coupling and
# the accuracy of a reused module?*
#
# After modular training, a kernel belongs to class c's module when its gate is open for at least
# a fraction θ of c's training samples (gates collected once, without augmentation). We sweep θ and
# plot the two figures MwT publishes: the modularization side (KRR, cohesion, coupling of the
# per-class modules) and the reuse side (KRR and fine-tuned accuracy of a module for a sub-task,
# against the standard model restricted to the sub-task's classes). A heat map shows, at the
# default θ, which share of each layer each class keeps. The models come from the cache of
# `40_mwt_modular_training` when the settings agree. The quick profile sweeps five values of θ
# (each fine-tunes a sub-task module, about 3.5 s on a 2-core CPU); the `paper` profile sweeps the
# published nine, 0.1 to 0.9.

# %% tags=["parameters"]
profile = "quick"          # smoke | quick | paper (set by the runner)
arch = "vgg16"            # zoo architecture to train modular (vgg16, resnet18, resnet20, simcnn, rescnn, tv:resnet18 ...)
width = 0.25               # width multiplier
dataset = "fashion-mnist"  # data set name
per_class = 1000           # training images per class (None: all)
test_per_class = 300       # test images per class (None: all)
alpha = 0.5                # weight of the cohesion loss
beta = 6.0                 # weight of the coupling loss (published: 1.5)
epochs = 8                 # training epochs of each model (from the standard model, the modular one trains this many more)
init_from = "standard"     # scratch (published) | standard: the modular model starts from the trained standard model
lr = 0.05                  # learning rate of network and gates (SGD, Nesterov momentum 0.9)
batch_size = 128           # batch size
augment = False            # random crop + flip while training (published: True)
thresholds = [0.1, 0.3, 0.5, 0.7, 0.9]  # θ values to sweep (paper profile: 0.1 to 0.9 by 0.1)
threshold = 0.9            # θ of the heat map
on_empty = "lower"         # a layer left empty: lower | top1 | raise
subtask = [0, 1, 2]        # the sub-task of the reuse side
finetune_epochs = 2        # fine-tuning epochs of each sub-task module
precision = "fp32"         # fp32 | bf16 | auto (bf16 mixed precision where the device computes it fast; see the README)
seed = 0                   # every random choice flows from this seed
device = "auto"            # auto | cpu | cuda
run_dir = "../runs/41_mwt_threshold_sweep"  # results go here
figures_dir = "../figures"                  # figures go here

# %%
from dataclasses import replace
from pathlib import Path

from modtools import mwt as W
from modtools import mwt_plots, plots
from modtools import train as T
from modtools.report import restricted_accuracy
from modtools.runner import config_from, current_parameters, write_results

NOTEBOOK = "41_mwt_threshold_sweep"
params = current_parameters(globals(), NOTEBOOK)
cache = Path(run_dir).parent / "models"
cfg = config_from(W.MwTConfig, params)
data = T.spec_data(cfg.spec(modular=True))
gated, _ = W.train_mwt(cfg, cache=cache, device=device, data=data)
standard, _ = W.train_standard(cfg, cache=cache, device=device, data=data)
stats = W.collect_gates(gated, data.train, device=device)
print(f"gates of {len(stats.labels)} training samples, {stats.num_kernels} gated kernels, {stats.seconds:.1f} s")

# %% [markdown]
# ## Sweep θ: modularization side and reuse side

# %%
rows = {"krr": [], "cohesion": [], "coupling": [], "reuse_krr": [], "reuse_accuracy": [], "empty_layers": []}
for theta in thresholds:
    u, decisions = W.module_masks(stats, theta, on_empty)
    rows["krr"].append(W.krr(u))
    rows["cohesion"].append(W.cohesion(stats, u))
    rows["coupling"].append(W.coupling(u))
    rows["empty_layers"].append(len(decisions))
    step = replace(cfg, threshold=theta)
    _, report = W.subtask_module(gated, stats, u, subtask, data, step, decisions, device=device)
    rows["reuse_krr"].append(report["krr"])
    rows["reuse_accuracy"].append(report["accuracy"])
    print(f"θ={theta:.2f}  KRR {rows['krr'][-1]:.3f}  cohesion {rows['cohesion'][-1]:.3f}  "
          f"coupling {rows['coupling'][-1]:.3f}  sub-task KRR {report['krr']:.3f}  accuracy {report['accuracy']:.3f}")

# %%
u_default, _ = W.module_masks(stats, threshold, on_empty)
results = {
    "arch": arch, "dataset": dataset, "thresholds": list(thresholds), **rows,
    "subtask": list(subtask), "subtask_names": [data.train.class_names[c] for c in subtask],
    "accuracy_standard_subtask": restricted_accuracy(standard, data.test, subtask, device=device),
    "threshold": threshold, "retention_by_layer": W.retention_by_layer(u_default, stats),
    "class_names": data.train.class_names, "gate_collection_seconds": stats.seconds,
}
write_results(run_dir, NOTEBOOK, params, results, device=str(T.resolve_device(device)), seed=seed)
plots.save_figure(mwt_plots.threshold_modularization_figure(results), figures_dir, NOTEBOOK, "modularization")
plots.save_figure(mwt_plots.threshold_reuse_figure(results), figures_dir, NOTEBOOK, "reuse")
plots.save_figure(mwt_plots.retention_heatmap(results), figures_dir, NOTEBOOK, "retention_by_layer")
