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
# # Module Foundry: search, decompose, evaluate, download and reuse modules
#
# *I need a module for "trouser" of a Fashion-MNIST model: is there one, how good and how small is it,
# and if there is none, can I make one without writing code?*
#
# The Module Foundry is a dashboard over a **module store** (a folder with an index of module
# cards). It lists the approaches of modtools from their registry, so every approach that is
# installed can decompose a model here. Decompositions run as background jobs in their own
# processes: the dashboard stays usable, a job can be cancelled, and jobs and their logs persist
# in the store, so a restarted kernel or server shows what ran.
#
# Run it in JupyterLab, or as a web app with `make app` (Voilà on 127.0.0.1, no code shown).
# The notebooks that make modules (00, 20, 30, 42, 50, 51) also save them into the store.

# %% tags=["parameters"]
profile = "quick"    # smoke | quick | paper (set by the runner)
store_dir = None     # the module store folder (None: $MODTOOLS_STORE, else run_dir/../store)
cache_dir = None     # the model cache (None: $MODTOOLS_CACHE, else run_dir/../models)
demo = False         # if the store is empty, train a tiny model on the synthetic set and decompose it
poll = 1.0           # seconds between refreshes of the Jobs tab while a job runs
seed = 0             # every random choice flows from this seed
device = "auto"      # auto | cpu | cuda
run_dir = "../runs/90_module_foundry"  # results go here
figures_dir = "../figures"             # figures go here

# %%
import os
from pathlib import Path

from modtools import foundry, plots
from modtools.approaches import get_approach
from modtools.dashboard import foundry_dashboard
from modtools.runner import current_parameters, write_results
from modtools.store import entries_table
from modtools.train import FitConfig, ModelSpec, resolve_device

NOTEBOOK = "90_module_foundry"
params = current_parameters(globals(), NOTEBOOK)
run_dir = Path(run_dir).resolve()
store = foundry.open_store(store_dir or os.environ.get("MODTOOLS_STORE") or run_dir.parent / "store")
cache = Path(cache_dir or os.environ.get("MODTOOLS_CACHE") or run_dir.parent / "models").resolve()
device_used = str(resolve_device(device))
print(f"store {store.root}: {len(store.entries())} modules; model cache {cache}: {len(foundry.list_models(cache))} models")

# %% [markdown]
# ## A first module, if the store is empty
# With `demo`, an empty store gets modules from a tiny model of the synthetic data set, made by
# the same background jobs the dashboard starts.

# %%
if demo and not store.entries():
    spec = ModelSpec(arch="rescnn", width=0.125, dataset="synthetic", data_seed=seed,
                     fit=FitConfig(epochs=10, batch_size=16, lr=0.05, seed=seed))
    for approach, classes in (("baseline", ["class0", "class1"]), ("seam", ["class2"])):
        job = foundry.decompose(store, approach, classes, spec=spec, params=dict(get_approach(approach).quick),
                                cache=cache, device=device)
        record = foundry.wait(store, job, timeout=600)
        print(approach, record["status"], record.get("error") or record["result"])

# %% [markdown]
# ## The dashboard
# Tabs: **Search** (class name, partial and case-insensitive; filters), **Inspect** (card,
# per-layer retention, the code that reproduces the module), **Decompose** (a cached model, an
# approach, its parameters, target classes by name), **Jobs** (progress, log, Cancel),
# **Evaluate** (against the source model), **Reuse** (download a zip, compose, patch).

# %%
board = foundry_dashboard(store, cache=cache, device=device, poll=poll)
board

# %% [markdown]
# ## What the store holds
# Accuracy on its task against MACs, for every module that has been evaluated.

# %%
rows = entries_table(store.entries())
fig = plots.store_figure(rows, f"modules in the store ({len(rows)})")
app_mode = os.environ.get("MODTOOLS_APP") == "1"   # served by make app: show, but write no results or figures
if not app_mode:
    plots.save_figure(fig, figures_dir, NOTEBOOK, "store")
results = {"modules": len(rows), "approaches": foundry.list_approaches(),
           "by_approach": {a: sum(r["approach"] == a for r in rows) for a in sorted({r["approach"] for r in rows})},
           "jobs": [{k: j.get(k) for k in ("id", "kind", "status", "error")} for j in foundry.jobs(store)],
           "store": str(store.root)}
if not app_mode:
    write_results(run_dir, NOTEBOOK, params, results, device=device_used, seed=seed);
