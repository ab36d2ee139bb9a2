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
# # SeaM: re-engineering a model for one class against the rest
#
# *Can a trained model be cut down to the weights one binary target problem needs, and lose no
# accuracy on it?*
#
# SeaM (Qi et al., ICSE 2023) gives every weight and bias of every conv and linear layer a score
# (hard step forward, clipped straight-through gradient), freezes everything else, and puts a new
# `ReLU → Linear` head on the original logits. Cross-entropy plus α times the weight retention rate
# (WRR) is minimised with Adam, alternating head-only and head+mask epochs. Here every class of one
# Fashion-MNIST model becomes a "class vs rest" problem with balanced, seeded negatives; the figure
# is the one ModelFoundry publishes as a table for CIFAR-10/SVHN: per class, the original model's
# accuracy, the re-engineered model's, and the share of weights it keeps.
#
# **Differences from the original, all parameters.** The epoch is selected on a validation split
# with the published acceptance rule (the original selected on the test split); the test split is
# read once. The published schedule needs hundreds of epochs because Adam moves each score by about
# `lr_mask` per step from a start of 1; the quick profile doubles `lr_mask`, quadruples α and runs twelve
# epochs of 20 mini-batches (the `paper` profile keeps the published values and 300 epochs). The
# head learns at 0.02 instead of 0.1: with only 20 steps an epoch, Adam at 0.1 swings the head by
# several points of accuracy from one epoch to the next, and the selection then picks noise
# (measured on this model, 10 classes: WRR 0.37 at +3.4 pt with 0.1; 0.30 at +3.8 pt with 0.02, and
# 0.31 at +3.2 pt with the seed 1 instead of 0).
# Starting the scores near 0 instead is not a shortcut: Adam's first steps then push half the
# weights below 0 at once, and the network collapses. Dropout is off while re-engineering. The original model (ResNet-20 ½, six epochs) is the standard model of
# `40_mwt_modular_training`, shared through the model cache.

# %% tags=["parameters"]
profile = "quick"          # smoke | quick | paper (set by the runner)
dataset = "fashion-mnist"  # data set name
arch = "resnet20"          # zoo architecture of the original model
width = 0.5                # width multiplier
per_class = 1000           # training images per class of the original model (None: all)
test_per_class = 300       # test images per class (None: all)
model_epochs = 6           # training epochs of the original model (SGD, Nesterov, cosine, crop + flip)
model_lr = 0.05            # learning rate of the original model
target_classes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # each becomes a "class vs rest" problem
lr_mask = 0.1              # Adam lr of the mask scores (published for ResNet-20/CIFAR-10: 0.05)
lr_head = 0.02             # Adam lr of the new head (published: 0.1; see above)
alpha = 4.0                # weight of the WRR (published for ResNet-20/CIFAR-10: 1.0)
epochs = 12                # re-engineering epochs (published: 300)
batch_size = 64            # batch size (published: 64)
head_every = 5             # every head_every-th epoch trains the head alone (published: 5)
init_value = 1.0           # initial score of every weight (published: 1.0)
kernel_level = False       # one score per kernel instead of per weight
augment = False            # random crop + flip while re-engineering (published: True)
steps_per_epoch = 20       # cap on mini-batches per epoch (None: the whole split)
precision = "fp32"         # fp32 | bf16 | auto (bf16 mixed precision where the device computes it fast; see the README)
seed = 0                   # every random choice flows from this seed
save_to_store = True  # also save the modules into the store (run_dir/../store) for the Module Foundry
device = "auto"            # auto | cpu | cuda
run_dir = "../runs/50_seam_binary"  # results and modules go here
figures_dir = "../figures"          # figures go here

# %%
from pathlib import Path

from modtools import foundry
from modtools import plots, seam_plots
from modtools import seam as S
from modtools import train as T
from modtools.runner import config_from, current_parameters, write_results

NOTEBOOK = "50_seam_binary"
params = current_parameters(globals(), NOTEBOOK)
spec = T.ModelSpec(arch=arch, width=width, dataset=dataset, per_class=per_class, test_per_class=test_per_class,
                   data_seed=seed, fit=T.FitConfig(precision=precision, epochs=model_epochs, batch_size=128, lr=model_lr, momentum=0.9,
                                                   nesterov=True, weight_decay=0.0, schedule="cosine", augment=True,
                                                   select_best=False, seed=seed))
data = T.spec_data(spec)
model, record = T.train_cached(spec, cache=Path(run_dir).parent / "models", device=device, data=data)
cfg = config_from(S.SeaMConfig, params)

# %% [markdown]
# ## Re-engineer the model for every class

# %%
rows = []
for c in target_classes:
    problem = S.target_problem(c, data.train.class_names, dataset)
    train, val, test = (problem.data(data.train, "train", seed), problem.data(data.val, "validation", seed),
                        problem.data(data.test, "test", seed))
    result = S.reengineer(model, problem, train, val, cfg, device=device)
    module = S.to_module(model, result, train, lineage=[{"step": "model", "spec": spec.key()},
                                                        {"step": "seam re-engineering"}])
    accuracy = float((T.predict(module.as_model(), test, device=device).argmax(1) == test.labels).float().mean())
    module.metrics.update({"accuracy": accuracy})
    folder = module.save(Path(run_dir) / "modules" / module.name)
    if save_to_store:
        foundry.save_to_store(module, run_dir, data, spec.key(), device)
    rows.append({"class": c, "name": data.train.class_names[c], "wrr": result.wrr,
                 "accuracy_original": S.original_accuracy(model, problem, test, device=device),
                 "accuracy_reengineered": accuracy, "val_accuracy": result.val_accuracy,
                 "val_accuracy_original": result.val_accuracy_original, "accepted": result.accepted,
                 "selected_epoch": result.selected_epoch, "seconds": result.seconds,
                 "history": result.history, "module_folder": str(folder)})
    print(f"{rows[-1]['name']:12s} WRR {result.wrr:.3f}  accuracy {rows[-1]['accuracy_original']:.3f} -> "
          f"{accuracy:.3f}  ({result.seconds:.0f} s, epoch {result.selected_epoch})")

# %%
results = {"arch": arch, "width": width, "dataset": dataset, "classes": rows, "config": cfg.__dict__,
           "model_key": spec.key(), "accuracy_model": record["test_accuracy"]}
write_results(run_dir, NOTEBOOK, params, results, device=str(T.resolve_device(device)), seed=seed)
plots.save_figure(seam_plots.binary_figure(results), figures_dir, NOTEBOOK, "classes")
