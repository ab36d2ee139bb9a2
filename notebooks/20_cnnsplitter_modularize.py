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
# # CNNSplitter: per-class modules by a genetic search
#
# *Can a genetic search over groups of important kernels split a trained N-class CNN into N
# modules, one per class, that keep a fraction of the kernels and together classify almost as
# well as the model?*
#
# CNNSplitter ranks each layer's kernels per class by their mean activation on the class's
# confidently predicted samples, cuts the ranking into 10 (or 100) groups, and searches one bit
# per group with a genetic algorithm. A candidate's fitness is how well it composes with the other
# classes' candidates (staged pairwise compositions with accuracy thresholds, plus a diversity
# term). Where the original asked a person to read sensitivity tables and type initial ratios,
# modtools prunes each layer alone at every ratio (all N modules in one batched pass) and a stated
# rule picks the ratios: the smallest ratio whose composed validation accuracy stays within
# `sensitivity_tolerance` of the unpruned one, plus 0.1 and 0.2.
#
# A module's output is the model's own-class logit with the head restricted to the kept channels;
# composing the modules is the argmax over their logits. The quick profile uses a narrow ResCNN (the
# paper's residual network, ⅛ width), a small population and few generations; the `paper` profile
# the published 100 × 200 search.
#
# **Two choices of the quick profile, both parameters.** (1) *A selection subset*: 20 validation
# images per class are all a CPU can score every candidate on, and the search fits them: its best
# ensemble scores 5–9 points above the model there while losing 3–7 on the test set. As the spec
# advises, `select_val_per_class` held-out validation images (disjoint from the search's) pick the
# best generation instead; the published search picks it on its own images (`None`). (2) *ResCNN*:
# the narrow SimCNN loses accuracy at every pruned layer, so the automatic ratios keep most kernels
# (KRR 0.73–0.82 over seeds 0–1); the residual network's skip connections tolerate pruning its
# later layers (KRR 0.59–0.72 over seeds 0–2 at a similar accuracy loss, see the README).
# The search writes a checkpoint after every generation (a run with the same values reuses it), and a
# later run with more generations goes on from it.

# %% tags=["parameters"]
profile = "quick"          # smoke | quick | paper (set by the runner)
dataset = "fashion-mnist"  # data set name
arch = "rescnn"            # zoo architecture of the trained model (simcnn | rescnn, the paper's two)
width = 0.125              # width multiplier
per_class = 1000           # training images per class of the model (None: all)
test_per_class = 300       # test images per class (None: all)
epochs = 4                 # training epochs of the model
lr = 0.05                  # learning rate of the model (SGD, momentum 0.9, cosine)
augment = False            # random crop + flip while training the model
search_val_per_class = 20  # validation images per class that score the candidates (None: all)
select_val_per_class = 80  # other validation images per class that pick the best generation (None: the search's own, as published)
population = 32            # individuals per class (published: 100)
generations = 12           # generations after the initial one (published: 200)
parents_mating = 16        # parents selected per generation (published: 50)
keep_parents = 8           # elites kept unchanged (published: 20)
mutation_percent = 5.0     # share of genes redrawn per child, in percent (published: 5)
alpha = 0.9                # accuracy weight of the fitness (published: 0.9)
gamma = 0.9                # the accuracy weight rises by max(0, gamma - best accuracy) (published: 0.9)
keep_min = 20              # composes kept per stage, at least (published: 50)
keep_max = 100             # and at most (published: 500)
confidence = 0.6           # kernel importance counts samples predicted with at least this probability (published: 0.9)
confidence_fallback = "all"  # raise | all: a class without confident samples uses all its samples
sensitivity_grid = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8]  # ratios of the sensitivity pass
sensitivity_tolerance = 0.03  # the rule: smallest ratio within this of the unpruned composed accuracy
sensitivity_offsets = [0.0, 0.1, 0.2]  # initial ratios: that ratio plus each of these
eval_mode = "auto"         # auto | masked | rebuild (auto: the faster on this device, measured)
patience = None            # stop after this many generations without a better ensemble (None: never)
precision = "fp32"         # fp32 | bf16 | auto (bf16 mixed precision where the device computes it fast; see the README)
seed = 0                   # every random choice flows from this seed
save_to_store = True  # also save the modules into the store (run_dir/../store) for the Module Foundry
device = "auto"            # auto | cpu | cuda
run_dir = "../runs/20_cnnsplitter_modularize"  # results and modules go here
figures_dir = "../figures"                     # figures go here

# %%
from pathlib import Path

from modtools import foundry
from modtools import cnnsplitter as C
from modtools import cnnsplitter_plots, plots
from modtools import train as T
from modtools.metrics import count_macs
from modtools.runner import current_parameters, write_results

NOTEBOOK = "20_cnnsplitter_modularize"
params = current_parameters(globals(), NOTEBOOK)
cache = Path(run_dir).parent / "models"
setup = C.prepare_search(params, cache, device)   # the model, its data and the search's config and checkpoint
spec, data, model, record = setup.spec, setup.data, setup.model, setup.record
search_val, cfg, checkpoint = setup.search_val, setup.cfg, setup.checkpoint

# %% [markdown]
# ## Search (importance, sensitivity, genetic search)

# %%
result = C.search(model, data.train, search_val, cfg, device=device, progress=True, checkpoint=checkpoint,
                  select=setup.select_val)
seconds_eval = sum(h["seconds_evaluate"] for h in result.history)
candidates_per_second = result.evaluation["evaluated"] / max(seconds_eval, 1e-9)
print(f"{len(result.history) - 1} generations in {result.seconds:.0f} s; evaluation {result.evaluation}; "
      f"best generation {result.best_generation}")

# %% [markdown]
# ## Evaluate and save the modules

# %%
report = C.evaluate_modules(model, result, data.test, device=device)
full_macs = count_macs(model.cpu(), data.train.shape)["macs"]
folders, macs_ratio = [], []
for c in range(data.train.num_classes):
    module = C.to_module(model.cpu(), result, c, data.train, metrics={"krr": report["krr_per_module"][c]},
                         lineage=[{"step": "model", "spec": spec.key()}, {"step": "cnnsplitter search"}])
    macs_ratio.append(count_macs(module.network, data.train.shape)["macs"] / full_macs)
    folders.append(str(module.save(Path(run_dir) / "modules" / module.name)))
    if save_to_store:
        foundry.save_to_store(module, run_dir, data, spec.key(), device)
print(f"model {report['accuracy_model']:.3f}, composed modules {report['accuracy_composed_modules']:.3f}, "
      f"mean KRR {report['krr_mean']:.3f}, mean MACs ratio {sum(macs_ratio) / len(macs_ratio):.3f}")

# %%
results = {
    "arch": arch, "dataset": dataset, "class_names": data.train.class_names, "model_key": spec.key(),
    "generations_run": len(result.history) - 1, "best_fitness": [h["best_fitness"] for h in result.history],
    "best_generation": result.best_generation, "history": result.history,
    "krr_mean": report["krr_mean"], "krr_per_module": report["krr_per_module"], "macs_ratio_per_module": macs_ratio,
    "macs_ratio_mean": sum(macs_ratio) / len(macs_ratio), "accuracy_model": report["accuracy_model"],
    "accuracy_composed_modules": report["accuracy_composed_modules"],
    "accuracy_loss": report["accuracy_model"] - report["accuracy_composed_modules"],
    "candidates_per_second": candidates_per_second, "evaluation": result.evaluation,
    "importance": result.importance, "sensitivity": result.sensitivity, "ratios": result.ratios,
    "sensitive": result.sensitive, "search_seconds": result.seconds, "checkpoint": str(checkpoint),
    "module_folders": folders, "config": result.config,
}
write_results(run_dir, NOTEBOOK, params, results, device=str(T.resolve_device(device)), seed=seed)
plots.save_figure(cnnsplitter_plots.importance_figure(results), figures_dir, NOTEBOOK, "importance")
plots.save_figure(cnnsplitter_plots.sensitivity_figure(results), figures_dir, NOTEBOOK, "sensitivity")
plots.save_figure(cnnsplitter_plots.search_figure(results), figures_dir, NOTEBOOK, "search")
plots.save_figure(cnnsplitter_plots.modules_figure(results), figures_dir, NOTEBOOK, "modules")
