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
# # Train the zoo models
#
# *How well do the zoo architectures learn the default task, and on which classes are they weak?*
#
# Later notebooks decompose and compose these models. Each model is a `ModelSpec` (data,
# architecture, recipe); `train_cached` trains it once and stores the weights under
# `runs/models/<arch>-<hash>/`, so any notebook that asks for the same spec loads it instead of
# training again (the quickstart's SimCNN, for instance, is reused here when the settings agree).
#
# The quick profile trains the two models that later notebooks take from the cache: the plain
# SimCNN (00, 30, 60) and the residual ResCNN (60), so that the main job spends no minutes on
# models nobody reuses. `-p archs '["simcnn", "rescnn", "incecnn", "vgg16", "resnet20"]'` trains
# more of the zoo on the same recipe; the `paper` profile trains six at full width on CIFAR-10.

# %% tags=["parameters"]
profile = "quick"          # smoke | quick | paper (set by the runner)
dataset = "fashion-mnist"  # data set name
archs = ["simcnn", "rescnn"]  # zoo architectures to train (the ones later notebooks reuse; also incecnn, vgg16, resnet20 ...)
width = 0.25               # width multiplier for every architecture ...
width_overrides = {"resnet20": 1.0}  # ... except these (ResNet-20 is already narrow)
per_class = 1000           # training images per class (None: all)
test_per_class = 300       # test images per class (None: all)
epochs = 4                 # training epochs
lr = 0.05                  # learning rate (SGD, momentum 0.9)
schedule = "cosine"        # cosine | step | constant
milestones = []            # epochs where a step schedule divides the lr by 10
augment = False            # random crop + flip while training
precision = "fp32"         # fp32 | bf16 | auto (bf16 mixed precision where the device computes it fast; see the README)
seed = 0                   # every random choice flows from this seed
device = "auto"            # auto | cpu | cuda
run_dir = "../runs/10_train_models"  # results go here
figures_dir = "../figures"           # figures go here

# %%
from pathlib import Path

from modtools import plots
from modtools import train as T
from modtools.metrics import count_macs
from modtools.runner import current_parameters, write_results

NOTEBOOK = "10_train_models"
params = current_parameters(globals(), NOTEBOOK)
run_dir = Path(run_dir)
cache = run_dir.parent / "models"

# %% [markdown]
# ## Train (or load) each model
# All models share the data split (same data seed) and the recipe.

# %%
records, class_reports = {}, {}
data = None
for arch in archs:
    spec = T.ModelSpec(arch=arch, width=width_overrides.get(arch, width), dataset=dataset, per_class=per_class,
                       test_per_class=test_per_class, data_seed=seed,
                       fit=T.FitConfig(precision=precision, epochs=epochs, lr=lr, schedule=schedule, milestones=tuple(milestones),
                                       augment=augment, seed=seed))
    data = data or T.spec_data(spec)
    model, record = T.train_cached(spec, cache=cache, device=device, data=data)
    report = T.evaluate(model, data.test, device=device)
    cost = count_macs(model.cpu(), data.train.shape)
    records[arch] = {"key": spec.key(), "history": record["history"], "cached": record["cached"],
                     "train_seconds": record["train_seconds"], "accuracy": report["accuracy"],
                     "macs": cost["macs"], "params": cost["params"]}
    class_reports[arch] = report["per_class"]
    print(f"{arch:10s} {spec.key()}  test accuracy {report['accuracy']:.3f}  "
          f"{cost['macs'] / 1e6:.1f} MMACs  {'cached' if record['cached'] else '%.0f s' % record['train_seconds']}")

# %% [markdown]
# ## Training curves and per-class accuracy
# A note on VGG16 (when trained): its published initialisation (classifier weights drawn from
# N(0, 0.01)) makes it start slowly, so within a few epochs it trails the others; the `paper`
# profile trains 200 epochs.

# %%
fig = plots.training_curves_figure(records)
plots.save_figure(fig, figures_dir, NOTEBOOK, "training_curves")
fig = plots.per_class_heatmap(class_reports, f"per-class test accuracy on {dataset}")
plots.save_figure(fig, figures_dir, NOTEBOOK, "per_class_accuracy")

# %%
write_results(run_dir, NOTEBOOK, params, {
    "models": records, "per_class": class_reports,
    "accuracy": {arch: r["accuracy"] for arch, r in records.items()},
    "class_names": data.train.class_names,
}, device=str(T.resolve_device(device)), seed=seed)
