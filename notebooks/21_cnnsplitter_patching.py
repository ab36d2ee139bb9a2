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
# # Patching weak models with modules of a strong model
#
# *Can a module of a strong model repair a weak model's weakest class without hurting the others?*
#
# A weak model is trained on a task that contains a target class (TC, always its last label, as in
# the paper). Three kinds, as the paper uses them: **simple** (a much narrower network),
# **overfit** (plain SGD without augmentation on few samples, the late checkpoint) and
# **underfit** (the early checkpoint of that run). Patching discards the weak model's own TC
# probability and puts in its place the strong model's TC module score; the prediction is the
# argmax. The same weak models are patched with a CNNSplitter module and with a GradSplitter
# module of the same strong model, side by side.
#
# **The strong model is a SimCNN ⅛, not 20's ResCNN ⅛.** The overfit and underfit weak models have
# the strong model's architecture, as in the paper. A ResCNN ⅛ learns this 6-class task well even
# without momentum on 100 images per class: its "overfit" models reach 94 % and detect the TC
# better than either module (F1 gain −1.1 points with ResCNN modules and weak models, −0.1 with the
# published min-max scaling), and its epoch-3 "underfit" models are as good (90 %). With a SimCNN
# the three kinds are weak, as the paper's are. The CNNSplitter search here is therefore its own
# (a SimCNN ⅛, population 16, picked on its search images); a run with 20's values of `arch` and the
# search parameters reuses 20's checkpoint instead.
#
# **How the score is calibrated.** The paper min-max normalises the score on the TC's validation
# samples (`calibration = "minmax"`). One hard TC sample with a low score stretches that range
# down, so many other-class images map into (0, 1), where they beat an unsure (underfitted) weak
# model's probabilities and cost the other classes accuracy. The original code also has an unused
# `percentile` range; here (`calibration = "percentile"`) the 5th and 95th percentiles of the TC's
# validation scores take the place of the min and max (`calibration_percentiles`), so the range is
# not set by its one or two most extreme samples. Measured on this profile's twelve patches (same
# weak models and modules, with the underfit checkpoint at epoch 3, as before the choice below):
#
# | calibration | worst drop of the other classes | mean F1 gain | F1 gain, overfit |
# |---|---|---|---|
# | minmax (published) | 4.7 pt | +16.9 pt | +0.6 pt |
# | percentile 5th-95th (used) | 1.1 pt | +16.2 pt | +0.3 pt |
# | percentile 10th-90th (the original's) | 1.0 pt | +14.5 pt | -1.5 pt |
# | outlier (Tukey's fences) | 4.7 pt | +15.9 pt | -0.8 pt |
#
# `calibration = "platt"` fits a probability of the TC (logistic regression on the score, TC against
# the weak task's other classes) and lets the module decide "TC or not" at ½; it trades the other
# classes' drop (2.1 pt) for the TC's F1 where the weak model was already good at the TC (overfit).
#
# **Which checkpoint is "underfit".** The paper's underfit model is the checkpoint at half the
# overfit model's epoch (its best-validation epoch, 59–88 of a 200-epoch run): a partly trained
# model. Here the run has 40 epochs, and its early checkpoints change the picture (same weak
# models otherwise, same modules; the other classes' change is the worst of the four underfit
# patches):
#
# | underfit epoch | other-class accuracy before (TC 2 / 4) | TC F1 before | F1 gain, CNNSplitter | F1 gain, GradSplitter | other classes | worst drop, all 12 patches | mean F1 gain |
# |---|---|---|---|---|---|---|---|
# | 3 | 0.72 / 0.75 | 0.68 / 0.44 | +7.7 / +39.0 | +22.4 / +45.3 | −1.07 | 1.07 | +16.2 |
# | 4 | 0.67 / 0.87 | 0.83 / 0.83 | −3.6 / −2.0 | +8.5 / +6.0 | −0.27 | 0.53 | +7.4 |
# | 5 | 0.84 / 0.84 | 0.88 / 0.81 | −2.7 / −0.3 | +4.4 / +8.8 | −0.53 | 0.53 | +7.5 |
# | **6 (used)** | 0.85 / 0.89 | 0.89 / 0.84 | +0.2 / +3.2 | +4.2 / +6.6 | **+0.80** | 0.53 | +7.8 |
# | 8 | 0.85 / 0.88 | 0.91 / 0.86 | −0.6 / +1.4 | +2.0 / +4.0 | +0.13 | 0.53 | +7.2 |
#
# At epoch 3 the weak models barely know the TC (Coat F1 0.44): the modules lift it by 39–45
# points, but CNNSplitter's Pullover module also takes 16 of 1,500 other-class images. From epoch 6
# the models are underfit rather than untrained (other classes 85–89 %, against 92 % overfit),
# every patch lifts the TC, and the other classes gain, as the paper reports. CNNSplitter's gain
# on these models is small and changes sign between neighbouring checkpoints (4, 5, 8);
# GradSplitter's stays positive.

# %% tags=["parameters"]
profile = "quick"          # smoke | quick | paper (set by the runner)
dataset = "fashion-mnist"  # data set name
arch = "simcnn"            # architecture of the strong model (20 uses rescnn: see above)
width = 0.125              # width multiplier of the strong model (as in 20)
per_class = 1000           # training images per class of the strong model (None: all)
test_per_class = 300       # test images per class (None: all)
epochs = 4                 # training epochs of the strong model
lr = 0.05                  # learning rate of the strong model
augment = False            # random crop + flip while training the strong model
search_val_per_class = 20  # CNNSplitter validation images per class, None: all (as in 20, the same values reuse its checkpoint)
select_val_per_class = None  # CNNSplitter held-out validation images per class that pick the best generation (None: its search images)
population = 16            # CNNSplitter individuals per class
generations = 12           # CNNSplitter generations
parents_mating = 8         # CNNSplitter parents per generation
keep_parents = 4           # CNNSplitter elites
mutation_percent = 5.0     # CNNSplitter mutation share in percent
alpha = 0.9                # CNNSplitter accuracy weight
gamma = 0.9                # CNNSplitter weight rise
keep_min = 20              # CNNSplitter composes kept per stage, at least
keep_max = 100             # and at most
confidence = 0.6           # CNNSplitter importance confidence
confidence_fallback = "all"  # raise | all
sensitivity_grid = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8]  # CNNSplitter sensitivity ratios
sensitivity_tolerance = 0.03  # CNNSplitter sensitivity rule
sensitivity_offsets = [0.0, 0.1, 0.2]  # CNNSplitter initial-ratio offsets
eval_mode = "auto"         # auto | masked | rebuild
patience = None            # CNNSplitter early stop (None: never)
target_classes = [2, 4]    # target classes (ids of the data set) to patch
task_classes = [0, 1, 3, 5, 7]  # the other classes of each weak task (the TC is appended last)
weak_per_class = 100       # training images per class of the weak models
weak_batch_size = 32       # batch size of the weak models (published: 128, on 8x more images)
simple_width = 0.03125     # width of the simple weak model (a SimCNN)
poor_fit_arch = None       # architecture of the overfit and underfit weak models (None: the strong model's, as published)
simple_epochs = 10         # its epochs (SGD, momentum 0.9, constant lr)
simple_lr = 0.01           # its lr (published: 0.01)
overfit_epochs = 40        # plain SGD without augmentation, the late checkpoint (published: 200)
underfit_epochs = 6        # the early checkpoint of the same run (see the table above)
weak_lr = 0.05             # lr of that run (published: 0.01 for 8x more steps)
calibration = "percentile" # patch score: minmax (published) | percentile | outlier | platt (fitted probability)
calibration_percentiles = [0.05, 0.95]  # low and high percentiles of the percentile calibration (original: 0.1, 0.9)
gs_search_per_class = 100  # GradSplitter: training images per class of its search (None: all)
gs_cycle_epochs = 8        # GradSplitter: mask/head cycle epochs
gs_init_value = 0.05       # GradSplitter: initial mask score
gs_lr_mask = 0.003         # GradSplitter: Adam lr of the masks
gs_alpha = 0.5             # GradSplitter: weight of the kept-kernel rate
precision = "fp32"         # fp32 | bf16 | auto (bf16 mixed precision where the device computes it fast; see the README)
seed = 0                   # every random choice flows from this seed
device = "auto"            # auto | cpu | cuda
run_dir = "../runs/21_cnnsplitter_patching"  # results go here
figures_dir = "../figures"                   # figures go here

# %%
from pathlib import Path

from modtools import cnnsplitter as C
from modtools import cnnsplitter_plots, plots
from modtools import data as D
from modtools import gradsplitter as G
from modtools import patch as P
from modtools import train as T
from modtools.runner import current_parameters, write_results

NOTEBOOK = "21_cnnsplitter_patching"
params = current_parameters(globals(), NOTEBOOK)
P.check_calibration(calibration)   # bad values stop here, before any training
P.check_percentiles(calibration_percentiles)
cache = Path(run_dir).parent / "models"
setup = C.prepare_search(params, cache, device)   # the model, its data and the search's config and checkpoint
spec, data, model, record = setup.spec, setup.data, setup.model, setup.record
search_val, cfg, checkpoint = setup.search_val, setup.cfg, setup.checkpoint

# %% [markdown]
# ## The strong model's modules: CNNSplitter and GradSplitter

# %%
cs_result = C.search(model, data.train, search_val, cfg, device=device, checkpoint=checkpoint, select=setup.select_val)
gs_cfg = G.GradSplitterConfig(first_head_epochs=2, cycle_epochs=gs_cycle_epochs, cycle_mask=3, cycle_head=1,
                              init="value", init_value=gs_init_value, lr_mask=gs_lr_mask, lr_head=0.05,
                              lr_head_later=0.005, alpha=gs_alpha, select="per_module", seed=seed,
                              schedule="quick")
gs_result = G.decompose(model, D.limit_per_class(data.train, gs_search_per_class, seed=seed), search_val, gs_cfg,
                        device=device)
modules = {}
for tc in target_classes:
    modules[(tc, "cnnsplitter")] = C.to_module(model.cpu(), cs_result, tc, data.train)
    modules[(tc, "gradsplitter")] = G.to_module(model.cpu(), gs_result, tc, data.train)
print({f"{k[1]} {data.train.class_names[k[0]]}": round(sum(int(v.sum()) for v in m.masks.values()) /
                                                         sum(v.numel() for v in m.masks.values()), 3)
       for k, m in modules.items()})

# %% [markdown]
# ## Weak models and patches

# %%
patches, weak_records = [], {}
for tc in target_classes:
    classes = [c for c in task_classes if c != tc] + [tc]
    specs = P.weak_specs(spec, classes, weak_per_class, simple_width=simple_width, simple_epochs=simple_epochs,
                         simple_lr=simple_lr, overfit_epochs=overfit_epochs, underfit_epochs=underfit_epochs,
                         lr=weak_lr, batch_size=weak_batch_size, seed=seed, poor_arch=poor_fit_arch)
    for kind, weak_spec in specs.items():
        weak_data = T.spec_data(weak_spec)
        weak, rec = T.train_cached(weak_spec, cache=cache, device=device, data=weak_data, progress=False)
        weak_records[f"{kind}-{tc}"] = {"test_accuracy": rec["test_accuracy"], "key": rec["key"]}
        for approach in ("cnnsplitter", "gradsplitter"):
            row = P.patch(weak, classes, modules[(tc, approach)], data.val, weak_data.test, tc, device=device,
                          calibration=calibration, percentiles=calibration_percentiles)
            patches.append({"weak_kind": kind, "weak_classes": classes, **row})
            print(f"{kind:8s} {row['target_name']:12s} {approach:12s} F1 {row['f1_before']:.3f} -> {row['f1_after']:.3f}, "
                  f"other classes {row['other_accuracy_before']:.3f} -> {row['other_accuracy_after']:.3f}")

# %%
results = {"dataset": dataset, "arch": arch, "model_key": spec.key(), "target_classes": list(target_classes),
           "task_classes": list(task_classes), "patches": patches, "weak_models": weak_records,
           "strong_test_accuracy": record["test_accuracy"], "cnnsplitter_checkpoint": str(checkpoint),
           "gradsplitter_config": gs_result.config, "cnnsplitter_config": cs_result.config}
write_results(run_dir, NOTEBOOK, params, results, device=str(T.resolve_device(device)), seed=seed)
plots.save_figure(cnnsplitter_plots.patching_figure(results), figures_dir, NOTEBOOK, "patches")
plots.save_figure(cnnsplitter_plots.published_patching_figure(results), figures_dir, NOTEBOOK, "published")
