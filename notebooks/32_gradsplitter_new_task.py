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
# # GradSplitter scenario B: a new task from modules
#
# *Can modules of models that never saw some classes together classify them together, without
# training, and how does that compare with training a model for the task from scratch?*
#
# Two source models are trained on two data sets (Fashion-MNIST and scikit-learn's digits by
# default; CIFAR-10 and SVHN in the `paper` profile) and decomposed once. A new task mixes classes
# of both; its classifier is composed from the sources' modules (argmax of their scores) and
# compared with the same architecture trained from scratch on the task, in accuracy and wall time.
# The composed model's time is the decomposition of both source models (done once and shared by
# every task built from them) plus composing; the scratch model's time is its training.
#
# **What the toolkit does beyond the paper, and why.** A module of one source never saw the other
# source's images: a Fashion-MNIST "Sandal" detector has no reason to score a handwritten digit
# low, so raw scores of the two sources do not compare (in our first runs one task lost 26 points
# to training from scratch). Calibrating two numbers per module on a validation split cannot teach
# a detector what the other source looks like; re-training the small heads can. So the composed
# classifier's heads (copies; the modules are unchanged) are re-fitted jointly on the task's
# training split, with negatives from both sources, on cached features of the frozen module
# networks (`compose_refit_epochs`; 0 gives the paper's raw composition). This is cheap next to
# training from scratch (its seconds are in the table), and the module networks (every conv
# kernel) stay as the decomposition made them.
#
# This notebook trains its own models and searches them in bf16 mixed precision where the CPU computes
# it natively (`precision = "auto"`; weights, losses and every reported number stay float32), which
# keeps it within the main job's budget; `precision = "fp32"` runs it as published.

# %% tags=["parameters"]
profile = "quick"          # smoke | quick | paper (set by the runner)
source_a = "fashion-mnist" # first source data set
source_b = "digits"        # second source data set
tasks = [[[0, 1, 7], [3, 5, 8]], [[5, 8], [0, 1, 2, 9]], [[2, 4, 6], [4, 7]]]  # per task: classes of source_a, of source_b
arch = "simcnn"            # architecture of the source models and of the scratch model
width = 0.25               # width multiplier
per_class = 1000           # training images per class of each source (None: all)
test_per_class = 300       # test images per class (None: all)
epochs = 4                 # training epochs of the source models and of the scratch model
lr = 0.05                  # learning rate (SGD, momentum 0.9)
schedule = "cosine"        # cosine | step | constant
milestones = []            # epochs where a step schedule divides the lr by 10
augment = False            # random crop + flip while training
search_per_class = 50      # training images per class used by each search (None: all)
search_val_per_class = 50  # validation images per class used to select each search's epochs (None: all)
first_head_epochs = 3      # head-only epochs before the cycles (published: 5)
cycle_epochs = 8           # epochs of mask/head cycles (published: 140)
cycle_mask = 3             # mask epochs per cycle (published: 5)
cycle_head = 1             # head epochs per cycle (published: 2)
init = "value"             # mask initialisation: ones | value | normal (published: ones)
init_value = 0.05          # initial score when init is "value"
lr_mask = 0.003            # Adam lr in mask phases (published: 0.001)
lr_head = 0.05             # Adam lr of the first head phase (published: 0.01)
lr_head_later = 0.005      # Adam lr of later head phases (published: 0.1 x lr_head)
alpha = 0.5                # weight of the kept-kernel rate (published: 0.1)
select = "per_module"      # per_module: each module its own epoch | composed: one epoch for all (published)
select_tolerance = 0.01    # selection: fewest kernels within this of the model's validation accuracy (published: 0.01)
refit_head_epochs = 0      # re-fit each search's heads on its selected masks (0: no, as published)
refit_lr = 0.01            # Adam lr of the re-fits
batch_size = 64            # search batch size
compose_refit_epochs = 30  # epochs re-fitting the composed heads on the task's training split (0: raw scores, as published)
precision = "auto"         # fp32 | bf16 | auto (bf16 mixed precision where the device computes it fast)
seed = 0                   # every random choice flows from this seed
device = "auto"            # auto | cpu | cuda
run_dir = "../runs/32_gradsplitter_new_task"  # results go here
figures_dir = "../figures"                     # figures go here

# %%
import time
from pathlib import Path

from modtools import compose as C
from modtools import data as D
from modtools import gradsplitter as G
from modtools import gradsplitter_plots, plots
from modtools import train as T
from modtools.runner import config_from, current_parameters, write_results

NOTEBOOK = "32_gradsplitter_new_task"
params = current_parameters(globals(), NOTEBOOK)
cache = Path(run_dir).parent / "models"
fit = T.FitConfig(precision=precision, epochs=epochs, lr=lr, schedule=schedule, milestones=tuple(milestones), augment=augment, seed=seed)
cfg = config_from(G.GradSplitterConfig, params, schedule=profile)

# %% [markdown]
# ## Train (or load) and decompose the two source models

# %%
sources = {}
for name in (source_a, source_b):
    spec = T.ModelSpec(arch=arch, width=width, dataset=name, per_class=per_class, test_per_class=test_per_class,
                       data_seed=seed, fit=fit)
    data = T.spec_data(spec)
    model, record = T.train_cached(spec, cache=cache, device=device, data=data)
    t0 = time.perf_counter()
    result = G.decompose(model, D.limit_per_class(data.train, search_per_class, seed=seed),
                         D.limit_per_class(data.val, search_val_per_class, seed=seed), cfg, device=device)
    sources[name] = {"model": model.cpu(), "result": result, "data": data, "seconds": time.perf_counter() - t0}
    print(f"{name}: model test accuracy {record['test_accuracy']:.3f}, decomposed in {sources[name]['seconds']:.0f} s")
decompose_seconds = sum(s["seconds"] for s in sources.values())

# %% [markdown]
# ## Each task: composed from modules vs trained from scratch

# %%
rows = []
for classes_a, classes_b in tasks:
    a, b = sources[source_a], sources[source_b]
    train_task = D.mixed_task(a["data"].train, classes_a, b["data"].train, classes_b, "train")
    val_task = D.mixed_task(a["data"].val, classes_a, b["data"].val, classes_b, "validation")
    test_task = D.mixed_task(a["data"].test, classes_a, b["data"].test, classes_b, "test")
    t0 = time.perf_counter()
    modules = [G.to_module(a["model"], a["result"], c, a["data"].train) for c in classes_a] + \
              [G.to_module(b["model"], b["result"], c, b["data"].train) for c in classes_b]
    composed = C.ComposedClassifier(modules, test_task.class_names)
    compose_seconds = time.perf_counter() - t0
    accuracy_raw = C.evaluate_composed(composed, test_task, device=device)["accuracy"]   # the paper's raw scores
    t0 = time.perf_counter()
    if compose_refit_epochs:
        composed.refit_heads(train_task, compose_refit_epochs, refit_lr, seed=seed, device=device)
    compose_seconds += time.perf_counter() - t0
    accuracy_composed = C.evaluate_composed(composed, test_task, device=device)["accuracy"]
    scratch = T.build_for(T.ModelSpec(arch=arch, width=width, fit=fit), train_task)
    t0 = time.perf_counter()
    T.fit(scratch, train_task, val_task, fit, device=device, progress=False)
    seconds_scratch = time.perf_counter() - t0
    accuracy_scratch = T.evaluate(scratch, test_task, device=device)["accuracy"]
    rows.append({"classes_a": classes_a, "classes_b": classes_b, "class_names": test_task.class_names,
                 "accuracy_composed": accuracy_composed, "accuracy_composed_raw": accuracy_raw,
                 "accuracy_scratch": accuracy_scratch,
                 "seconds_composed": decompose_seconds + compose_seconds, "seconds_compose_only": compose_seconds,
                 "seconds_scratch": seconds_scratch, "train_size_scratch": len(train_task)})
    print(f"{test_task.class_names}: composed {accuracy_composed:.3f} (raw scores {accuracy_raw:.3f}; "
          f"{decompose_seconds + compose_seconds:.0f} s), scratch {accuracy_scratch:.3f} ({seconds_scratch:.0f} s)")

# %%
results = {"arch": arch, "sources": [source_a, source_b], "tasks": rows, "decompose_seconds": decompose_seconds}
write_results(run_dir, NOTEBOOK, params, results, device=str(T.resolve_device(device)), seed=seed)
plots.save_figure(gradsplitter_plots.new_task_figure(results), figures_dir, NOTEBOOK, "composed_vs_scratch")
