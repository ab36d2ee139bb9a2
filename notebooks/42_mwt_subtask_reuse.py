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
# # MwT: reusing modules for sub-tasks
#
# *How much smaller and faster is a module for a sub-task, and how accurate is it compared with the
# standard model?*
#
# For each sub-task (a set of classes), the module is the union of its classes' kernels, extracted
# as one physically smaller network with a new `ReLU → Linear` head on the logits, fine-tuned
# briefly with the epoch selected on a validation split. It is compared with the standard model
# restricted to the sub-task's logits and with the modular (gated) model itself. Modules are saved
# as module folders under `runs/42_mwt_subtask_reuse/modules/`.

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
subtasks = [[0, 1], [2, 4, 6], [5, 7, 9], [1, 3, 8, 9]]  # sub-tasks (lists of class ids)
threshold = 0.9            # θ of the frequency rule
on_empty = "lower"         # a layer left empty: lower | top1 | raise
finetune_epochs = 3        # fine-tuning epochs of each module (published: 10)
latency_repeats = 20       # timed rounds (module and standard model alternately) per latency ratio
precision = "fp32"         # fp32 | bf16 | auto (bf16 mixed precision where the device computes it fast; see the README)
seed = 0                   # every random choice flows from this seed
save_to_store = True  # also save the modules into the store (run_dir/../store) for the Module Foundry
device = "auto"            # auto | cpu | cuda
run_dir = "../runs/42_mwt_subtask_reuse"  # results and modules go here
figures_dir = "../figures"                # figures go here

# %%
from pathlib import Path

from modtools import foundry
from modtools import mwt as W
from modtools import mwt_plots, plots
from modtools import train as T
from modtools.metrics import count_macs, latency_ratio
from modtools.report import restricted_accuracy
from modtools.runner import config_from, current_parameters, write_results

NOTEBOOK = "42_mwt_subtask_reuse"
params = current_parameters(globals(), NOTEBOOK)
cache = Path(run_dir).parent / "models"
cfg = config_from(W.MwTConfig, params)
data = T.spec_data(cfg.spec(modular=True))
gated, _ = W.train_mwt(cfg, cache=cache, device=device, data=data)
standard, _ = W.train_standard(cfg, cache=cache, device=device, data=data)
stats = W.collect_gates(gated, data.train, device=device)
u, decisions = W.module_masks(stats, threshold, on_empty)
shape = data.train.shape
full_macs = count_macs(standard.cpu(), shape)["macs"]

# %% [markdown]
# ## One module per sub-task

# %%
rows = []
for classes in subtasks:
    module, report = W.subtask_module(gated, stats, u, classes, data, cfg, decisions, device=device)
    folder = module.save(Path(run_dir) / "modules" / module.name)
    net = module.as_model().cpu()
    row = {"classes": list(classes), "class_names": [data.train.class_names[c] for c in classes],
           "krr": report["krr"], "macs_ratio": count_macs(net, shape)["macs"] / full_macs,
           "latency_ratio": latency_ratio(net, standard, shape, 64, repeats=latency_repeats)["ratio"],
           "accuracy_module": report["accuracy"], "accuracy_module_before_finetune": report["accuracy_before_finetune"],
           "val_accuracy_module": report["val_accuracy"],
           "accuracy_standard": restricted_accuracy(standard, data.test, classes, device=device),
           "accuracy_modular": restricted_accuracy(gated, data.test, classes, device=device),
           "module_folder": str(folder)}
    rows.append(row)
    if save_to_store:   # after the timings; its source is the gated model, not a standard one: no source key
        foundry.save_to_store(module, run_dir)
    print(f"{'+'.join(row['class_names'])}: KRR {row['krr']:.2f}, MACs {row['macs_ratio']:.2f}, "
          f"latency {row['latency_ratio']:.2f}, accuracy {row['accuracy_module']:.3f} "
          f"(standard {row['accuracy_standard']:.3f}, modular {row['accuracy_modular']:.3f})")

# %%
results = {"arch": arch, "dataset": dataset, "threshold": threshold, "subtasks": rows,
           "empty_layer_decisions": decisions}
write_results(run_dir, NOTEBOOK, params, results, device=str(T.resolve_device(device)), seed=seed)
plots.save_figure(mwt_plots.subtask_figure(results), figures_dir, NOTEBOOK, "subtasks")
