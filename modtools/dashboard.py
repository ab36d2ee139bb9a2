"""The Module Foundry dashboard: ipywidgets over :mod:`modtools.foundry`, for JupyterLab and Voilà.

``foundry_dashboard(store)`` returns a :class:`Dashboard`; display it (or its ``.widget``). Tabs:
Search, Inspect, Decompose, Jobs, Evaluate, Reuse. Every button calls one foundry function; the
dashboard keeps no logic of its own beyond turning widget values into arguments and results into
HTML. Errors show in the message line in red, with their type, never as a silent stop. Jobs run in
their own processes; a background thread refreshes the Jobs tab while any job is active.

Widgets carry CSS classes ``mt-…`` so a browser test can find them.
"""
from __future__ import annotations

import base64
import html
import io
import json
import threading
import time
from typing import Any, Callable

import ipywidgets as W

from . import foundry
from .approaches import Param, approach_params, get_approach, list_approaches
from .errors import StoreNotWritableError
from .store import ModuleStore

ANY = "(any)"
_STATUS_COLOR = {"queued": "#888", "running": "#1f77b4", "done": "#2ca02c", "failed": "#d62728", "cancelled": "#ff7f0e"}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return html.escape(str(v))


def entry_card_html(e) -> str:
    """One search result as a small HTML card."""
    return (f"<div class='mt-card' style='border:1px solid #ccc;border-radius:6px;padding:6px 10px;margin:4px 0'>"
            f"<b class='mt-card-name'>{html.escape(e.name)}</b> &nbsp; <i>{html.escape(', '.join(e.class_names))}</i><br>"
            f"{html.escape(e.approach)} on {html.escape(e.arch)} ({html.escape(e.dataset)}) · accuracy {_fmt(e.accuracy)}"
            f" · {e.retention_kind} {_fmt(e.retention)} · MACs {_fmt(e.macs)} · {e.size_bytes / 1024:.0f} kB"
            f" · {html.escape(e.created)}</div>")


def retention_png(retention: dict[str, float]) -> bytes:
    """A small bar chart of the kernels kept per layer, as PNG bytes."""
    from matplotlib.figure import Figure   # no pyplot: the notebook's backend is left alone

    layers = list(retention)
    fig = Figure(figsize=(min(1.5 + 0.35 * len(layers), 10), 2.2))
    ax = fig.subplots()
    ax.bar(range(len(layers)), [retention[k] for k in layers], color="#1f77b4")
    ax.set_xticks(range(len(layers)), layers, rotation=70, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("kernels kept")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _set_options(w: W.Dropdown, options: list) -> None:
    """Set a dropdown's options, keeping its value when it is still there, else choosing the first."""
    keep = w.value
    w.options = options
    values = [o[1] if isinstance(o, tuple) else o for o in options]
    if keep in values:
        w.value = keep
    elif values:
        w.value = values[0]


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td style='padding-right:12px'>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def param_widget(p: Param) -> W.Widget:
    """An input widget for one config field, with its default and bounds."""
    desc = p.name
    style = {"description_width": "160px"}
    if p.kind == "bool":
        return W.Checkbox(value=bool(p.default), description=desc, style=style, indent=False)
    if p.kind == "choice":
        return W.Dropdown(options=list(p.choices), value=p.default, description=desc, style=style)
    if p.optional or p.kind == "str":
        return W.Text(value="" if p.default is None else str(p.default), description=desc, style=style,
                      placeholder="None" if p.optional else "")
    low = p.low if p.low is not None else -1e12
    high = p.high if p.high is not None else 1e12
    if p.kind == "int":
        return W.BoundedIntText(value=int(p.default), min=int(low), max=int(high), description=desc, style=style)
    return W.BoundedFloatText(value=float(p.default), min=low, max=high, step=None, description=desc, style=style)


def widget_value(p: Param, w: W.Widget) -> Any:
    """The value of a parameter widget as the config expects it (the config checks it)."""
    v = w.value
    if p.optional and isinstance(v, str):
        text = v.strip()
        if text in ("", "None"):
            return None
        return int(text) if p.kind == "int" and text.lstrip("-").isdigit() else (
            float(text) if p.kind == "float" else text)
    return v


class Dashboard:
    """The Module Foundry dashboard over one store (see the module docstring)."""

    def __init__(self, store: ModuleStore, cache=None, device: str = "auto", poll: float = 1.0):
        self.store, self.cache, self.device, self.poll = store, cache, device, poll
        self.message = W.HTML(layout=W.Layout(min_height="24px")).add_class("mt-message")
        self._poller: threading.Thread | None = None
        self._job_rows: dict[str, dict] = {}
        self._build_search()
        self._build_inspect()
        self._build_decompose()
        self._build_jobs()
        self._build_evaluate()
        self._build_reuse()
        self.tabs = W.Tab(children=[self.search_tab, self.inspect_tab, self.decompose_tab, self.jobs_tab,
                                    self.evaluate_tab, self.reuse_tab]).add_class("mt-tabs")
        for i, t in enumerate(["Search", "Inspect", "Decompose", "Jobs", "Evaluate", "Reuse"]):
            self.tabs.set_title(i, t)
        header = W.HTML(f"<h3 style='margin:4px 0'>Module Foundry</h3><small>store: {html.escape(str(store.root))}"
                        f" · approaches: {', '.join(get_approach(a).title for a in list_approaches())}</small>")
        self.widget = W.VBox([header, self.message, self.tabs]).add_class("mt-dashboard")
        self.refresh_models()
        self.refresh_names()
        self.refresh_jobs()

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)

    # -- messages and errors --------------------------------------------------------------
    def say(self, text: str, error: bool = False) -> None:
        color = "#d62728" if error else "#2a2a2a"
        self.message.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args):
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - every error is shown, none stops silently
                self.say(f"{type(exc).__name__}: {exc}", error=True)
        return run

    def _button(self, label: str, css: str, fn, style: str = "") -> W.Button:
        b = W.Button(description=label, button_style=style).add_class(css)
        b.on_click(self._guard(lambda _b: fn()))
        return b

    # -- search ---------------------------------------------------------------------------
    def _build_search(self) -> None:
        self.q_text = W.Text(placeholder="class name, e.g. trouser", description="Search").add_class("mt-search-text")
        self.q_dataset = W.Dropdown(options=[ANY], description="data set")
        self.q_arch = W.Dropdown(options=[ANY], description="model")
        self.q_approach = W.Dropdown(options=[ANY] + list_approaches(), description="approach")
        self.q_min_acc = W.BoundedFloatText(value=0.0, min=0.0, max=1.0, step=0.01, description="min accuracy")
        self.q_max_ret = W.BoundedFloatText(value=1.0, min=0.0, max=1.0, step=0.01, description="max KRR/WRR")
        self.q_max_mmacs = W.BoundedFloatText(value=0.0, min=0.0, max=1e9, description="max MMACs",
                                              tooltip="0: no limit").add_class("mt-max-macs")
        self.results = W.HTML().add_class("mt-results")
        self.result_pick = W.Dropdown(options=[], description="module").add_class("mt-result-pick")
        go = self._button("Search", "mt-search-button", self.do_search, "primary")
        self.q_text.on_submit(self._guard(lambda _w: self.do_search()))
        open_card = self._button("Open card", "mt-open-card", lambda: self.open_card(self.result_pick.value))
        self.search_tab = W.VBox([W.HBox([self.q_text, go]), W.HBox([self.q_dataset, self.q_arch, self.q_approach]),
                                  W.HBox([self.q_min_acc, self.q_max_ret, self.q_max_mmacs]), W.HBox([self.result_pick, open_card]),
                                  self.results])

    def do_search(self) -> list:
        pick = lambda w: None if w.value == ANY else w.value  # noqa: E731
        entries = foundry.search(self.store, self.q_text.value, dataset=pick(self.q_dataset), arch=pick(self.q_arch),
                                 approach=pick(self.q_approach),
                                 min_accuracy=self.q_min_acc.value or None,
                                 max_retention=None if self.q_max_ret.value >= 1.0 else self.q_max_ret.value,
                                 max_macs=int(round(self.q_max_mmacs.value * 1e6)) if self.q_max_mmacs.value > 0 else None)
        self.results.value = "".join(entry_card_html(e) for e in entries)
        _set_options(self.result_pick, [e.name for e in entries])
        self.say(f"{len(entries)} module(s) found")
        return entries

    def refresh_names(self) -> None:
        entries = self.store.entries()
        names = [e.name for e in entries]
        for w in (self.inspect_pick, self.eval_pick, self.dl_pick, self.patch_pick):
            _set_options(w, names)
        self.compose_pick.options = names
        self.q_dataset.options = [ANY] + sorted({e.dataset for e in entries})
        self.q_arch.options = [ANY] + sorted({e.arch for e in entries})

    # -- inspect --------------------------------------------------------------------------
    def _build_inspect(self) -> None:
        self.inspect_pick = W.Dropdown(options=[], description="module").add_class("mt-inspect-pick")
        self.card_html = W.HTML().add_class("mt-card-full")
        self.retention_plot = W.Image(format="png", layout=W.Layout(max_width="95%")).add_class("mt-retention")
        self.code = W.Textarea(layout=W.Layout(width="95%", height="140px")).add_class("mt-code")
        self.code_box = W.VBox([W.HTML("<b>Code that reproduces this module</b> (paste it into a notebook)"),
                                self.code], layout=W.Layout(display="none"))
        show = W.ToggleButton(description="show code").add_class("mt-show-code")
        show.observe(lambda ch: setattr(self.code_box.layout, "display", "" if ch["new"] else "none"), "value")
        self.inspect_tab = W.VBox([W.HBox([self.inspect_pick,
                                           self._button("Open", "mt-inspect-open", lambda: self.open_card(self.inspect_pick.value)),
                                           show]),
                                   self.retention_plot, self.code_box, self.card_html])

    def open_card(self, name: str | None) -> dict:
        if not name:
            raise ValueError("no module chosen; search first, then pick a module")
        info = foundry.inspect(self.store, name)
        card = info["card"]
        self.inspect_pick.value = name
        self.card_html.value = (f"<h4 class='mt-card-title'>{html.escape(name)}</h4>"
                                f"<pre style='max-height:400px;overflow:auto'>{html.escape(json.dumps(card, indent=1))}</pre>")
        self.code.value = info["code"]
        self.retention_plot.value = retention_png(info["retention_by_layer"]) if info["retention_by_layer"] else b""
        self.tabs.selected_index = 1
        self.say(f"card of {name}")
        return card

    # -- decompose ------------------------------------------------------------------------
    def _build_decompose(self) -> None:
        self.model_pick = W.Dropdown(options=[], description="model").add_class("mt-model-pick")
        self.model_info = W.HTML()
        self.approach_pick = W.Dropdown(options=[(get_approach(a).title, a) for a in list_approaches()],
                                        description="approach").add_class("mt-approach-pick")
        self.classes_text = W.Text(description="classes", placeholder="names, comma-separated").add_class("mt-classes")
        self.name_text = W.Text(description="module name", placeholder="(automatic)").add_class("mt-module-name")
        self.params_box = W.VBox().add_class("mt-params")
        self._param_widgets: dict[str, tuple[Param, W.Widget]] = {}
        self.model_pick.observe(lambda _c: self._show_model(), "value")
        self.approach_pick.observe(lambda _c: self._show_params(), "value")
        quick = self._button("Quick CPU settings", "mt-quick", self.quick_settings)
        go = self._button("Modularize", "mt-modularize", self.do_decompose, "primary")
        self.train_arch = W.Dropdown(options=["simcnn", "rescnn", "incecnn", "vgg16", "resnet20"], description="arch")
        self.train_dataset = W.Dropdown(options=["fashion-mnist", "synthetic", "digits", "cifar10", "mnist", "svhn"],
                                        description="data set")
        self.train_width = W.BoundedFloatText(value=0.25, min=0.03125, max=4.0, description="width")
        self.train_epochs = W.BoundedIntText(value=5, min=1, max=1000, description="epochs")
        train = self._button("Train", "mt-train", self.do_train)
        self.decompose_tab = W.VBox([
            W.HBox([self.model_pick, self._button("Refresh models", "mt-refresh-models", self.refresh_models)]),
            self.model_info, self.approach_pick, self.classes_text, self.name_text,
            W.HBox([W.HTML("<b>Parameters</b> (defaults: the approach's config)"), quick]), self.params_box, go,
            W.HTML("<hr><b>Or train a model</b> (a background job; it appears in the model list when done)"),
            W.HBox([self.train_arch, self.train_dataset]), W.HBox([self.train_width, self.train_epochs, train])])
        self._models: dict = {}
        self._show_params()

    def refresh_models(self) -> None:
        self._models = {m["key"]: m for m in foundry.list_models(self.cache)}
        _set_options(self.model_pick, [(f"{m['key']} ({m['dataset']}, test acc {_fmt(m['test_accuracy'])})", k)
                                       for k, m in self._models.items()])
        _set_options(self.patch_weak, list(self._models))
        self._show_model()

    def _show_model(self) -> None:
        m = self._models.get(self.model_pick.value)
        self.model_info.value = ("" if m is None else
                                 f"<small>classes: {html.escape(', '.join(m['class_names']))}</small>")

    def _show_params(self) -> None:
        self._param_widgets = {p.name: (p, param_widget(p)) for p in approach_params(self.approach_pick.value)}
        for name, (_, w) in self._param_widgets.items():
            w.add_class(f"mt-param-{name}")
        self.params_box.children = [w for _, w in self._param_widgets.values()]

    def quick_settings(self) -> None:
        for k, v in get_approach(self.approach_pick.value).quick.items():
            if k in self._param_widgets:
                p, w = self._param_widgets[k]
                w.value = "" if v is None else (str(v) if isinstance(w, W.Text) else v)
        self.say("quick CPU settings filled in")

    def params(self) -> dict:
        """The parameters that differ from the config's defaults."""
        out = {}
        for name, (p, w) in self._param_widgets.items():
            v = widget_value(p, w)
            if v != p.default:
                out[name] = v
        return out

    def do_decompose(self) -> str:
        if not self.model_pick.value:
            raise ValueError("no trained model in the cache; train one below first")
        classes = [c.strip() for c in self.classes_text.value.split(",") if c.strip()]
        job_id = foundry.decompose(self.store, self.approach_pick.value, classes, model_key=self.model_pick.value,
                                   params=self.params(), name=self.name_text.value.strip() or None,
                                   cache=self.cache, device=self.device)
        self.say(f"job {job_id} started")
        self.refresh_jobs()
        self.tabs.selected_index = 3
        return job_id

    def do_train(self) -> str:
        from .train import FitConfig, ModelSpec

        spec = ModelSpec(arch=self.train_arch.value, width=self.train_width.value, dataset=self.train_dataset.value,
                         fit=FitConfig(epochs=self.train_epochs.value))
        job_id = foundry.train_model(self.store, spec, self.cache, self.device)
        self.say(f"training job {job_id} started")
        self.refresh_jobs()
        return job_id

    # -- jobs -----------------------------------------------------------------------------
    def _build_jobs(self) -> None:
        self.jobs_box = W.VBox().add_class("mt-jobs")
        self.log_view = W.Textarea(layout=W.Layout(width="95%", height="200px")).add_class("mt-log")
        self._log_job: str | None = None
        self.jobs_tab = W.VBox([self._button("Refresh", "mt-refresh-jobs", self.refresh_jobs), self.jobs_box,
                                W.HTML("<b>Log</b>"), self.log_view])

    def _job_row(self, rec: dict) -> dict:
        label = W.HTML().add_class("mt-job-label")
        bar = W.FloatProgress(min=0.0, max=1.0).add_class("mt-job-progress")
        cancel = W.Button(description="Cancel", button_style="warning").add_class("mt-cancel")
        show = W.Button(description="Log").add_class("mt-show-log")
        job_id = rec["id"]
        cancel.on_click(self._guard(lambda _b: self.cancel(job_id)))
        show.on_click(self._guard(lambda _b: self.show_log(job_id)))
        box = W.HBox([bar, cancel, show, label]).add_class(f"mt-job-{job_id}")
        return {"box": box, "label": label, "bar": bar, "cancel": cancel}

    def refresh_jobs(self) -> list[dict]:
        records = foundry.jobs(self.store)
        for rec in records:
            row = self._job_rows.get(rec["id"]) or self._job_rows.setdefault(rec["id"], self._job_row(rec))
            color = _STATUS_COLOR.get(rec["status"], "#000")
            detail = rec.get("error") if rec["status"] == "failed" else (
                ", ".join(rec["result"].get("modules", [])) if rec["status"] == "done" and rec.get("result") else
                rec.get("message", ""))
            row["label"].value = (f"<span class='mt-status mt-status-{rec['status']}' style='color:{color}'>"
                                  f"<b>{rec['status']}</b></span> {html.escape(rec.get('title', ''))} "
                                  f"<small>({rec['id']})</small> — {html.escape(str(detail or ''))}")
            row["bar"].value = float(rec.get("progress") or 0.0)
            row["bar"].bar_style = {"done": "success", "failed": "danger", "cancelled": "warning"}.get(rec["status"], "")
            row["cancel"].disabled = rec["status"] not in ("queued", "running")
        self.jobs_box.children = [self._job_rows[r["id"]]["box"] for r in records]
        if self._log_job:
            self.log_view.value = foundry.log(self.store, self._log_job, tail=60)
        if any(r["status"] in ("queued", "running") for r in records):
            self._start_polling()
        elif any(r["status"] == "done" for r in records):
            self.refresh_names()
        return records

    def _start_polling(self) -> None:
        if self._poller is not None and self._poller.is_alive():
            return

        def loop():
            while True:
                time.sleep(self.poll)
                try:
                    records = self.refresh_jobs()   # this thread is alive, so it starts no other poller
                except Exception as exc:  # noqa: BLE001
                    self.say(f"{type(exc).__name__}: {exc}", error=True)
                    return
                if not any(r["status"] in ("queued", "running") for r in records):
                    self.refresh_names()
                    self.refresh_models()
                    return

        self._poller = threading.Thread(target=loop, daemon=True, name="foundry-poll")
        self._poller.start()

    def cancel(self, job_id: str) -> dict:
        rec = foundry.cancel(self.store, job_id)
        self.say(f"job {job_id}: {rec['status']}")
        self.refresh_jobs()
        return rec

    def show_log(self, job_id: str) -> None:
        self._log_job = job_id
        self.log_view.value = foundry.log(self.store, job_id, tail=60)

    # -- evaluate -------------------------------------------------------------------------
    def _build_evaluate(self) -> None:
        self.eval_pick = W.Dropdown(options=[], description="module").add_class("mt-eval-pick")
        self.eval_out = W.HTML().add_class("mt-eval-result")
        self.evaluate_tab = W.VBox([W.HBox([self.eval_pick, self._button("Evaluate", "mt-evaluate", self.do_evaluate,
                                                                         "primary")]), self.eval_out])

    def do_evaluate(self) -> dict:
        if not self.eval_pick.value:
            raise ValueError("no module chosen")
        self.say(f"evaluating {self.eval_pick.value} …")
        r = foundry.evaluate(self.store, self.eval_pick.value, self.cache, self.device)
        rows = [("task", r.get("task")), ("module accuracy", r.get("accuracy")),
                ("source model accuracy (same task)", r.get("source_accuracy")),
                ("accuracy loss", r.get("accuracy_loss")), ("MACs module / source", r.get("macs_ratio")),
                ("latency module / source", r.get("latency_ratio")), ("module MACs", r.get("macs")),
                ("module parameters", r.get("params"))]
        rows += [(f"F1 {k}", v) for k, v in (r.get("f1") or {}).items()]
        self.eval_out.value = _table([(k, v) for k, v in rows if v is not None])
        self.refresh_names()
        self.say(f"evaluated {r['name']}")
        return r

    # -- reuse: download, compose, patch ---------------------------------------------------
    def _build_reuse(self) -> None:
        self.dl_pick = W.Dropdown(options=[], description="module").add_class("mt-download-pick")
        self.dl_link = W.HTML().add_class("mt-download-link")
        self.compose_pick = W.SelectMultiple(options=[], description="modules", rows=5).add_class("mt-compose-pick")
        self.compose_name = W.Text(description="new name", placeholder="(automatic)")
        self.patch_pick = W.Dropdown(options=[], description="module")
        self.patch_weak = W.Dropdown(options=[], description="weak model")
        self.patch_name = W.Text(description="new name", placeholder="(automatic)")
        self.reuse_out = W.HTML().add_class("mt-reuse-result")
        self.reuse_tab = W.VBox([
            W.HTML("<b>Download</b> a module as one zip (card.json + weights.safetensors)"),
            W.HBox([self.dl_pick, self._button("Prepare download", "mt-download", self.do_download)]), self.dl_link,
            W.HTML("<hr><b>Compose</b> detector modules (one class each) into a classifier for their classes"),
            W.HBox([self.compose_pick, W.VBox([self.compose_name, self._button("Compose", "mt-compose", self.do_compose)])]),
            W.HTML("<hr><b>Patch</b> a weak model's class with a one-class module"),
            W.HBox([self.patch_pick, self.patch_weak]),
            W.HBox([self.patch_name, self._button("Patch", "mt-patch", self.do_patch)]), self.reuse_out])


    def do_download(self) -> str:
        name = self.dl_pick.value
        if not name:
            raise ValueError("no module chosen")
        path = foundry.download(self.store, name)
        data = base64.b64encode(path.read_bytes()).decode()
        self.dl_link.value = (f"<a class='mt-download-anchor' download='{html.escape(path.name)}' "
                              f"href='data:application/zip;base64,{data}'>Download {html.escape(path.name)}</a> "
                              f"({path.stat().st_size / 1024:.0f} kB; also at {html.escape(str(path))})")
        self.say(f"{path.name} ready")
        return str(path)

    def do_compose(self) -> dict:
        out = foundry.compose(self.store, list(self.compose_pick.value), self.compose_name.value.strip() or None,
                              self.device)
        self.reuse_out.value = _table([("saved as", out["name"]), ("accuracy", out["accuracy"]), ("MACs", out["macs"])]
                                      + [(f"F1 {k}", v) for k, v in out["f1"].items()])
        self.refresh_names()
        self.say(f"composition saved as {out['name']}")
        return out

    def do_patch(self) -> dict:
        if not self.patch_pick.value or not self.patch_weak.value:
            raise ValueError("choose a module and a weak model")
        out = foundry.patch(self.store, self.patch_pick.value, self.patch_weak.value,
                            self.patch_name.value.strip() or None, self.cache, self.device)
        self.reuse_out.value = _table([("saved as", out["name"]), ("target class", out["target_name"]),
                                       ("F1 before", out["f1_before"]), ("F1 after", out["f1_after"]),
                                       ("other classes' accuracy before", out["other_accuracy_before"]),
                                       ("other classes' accuracy after", out["other_accuracy_after"])])
        self.refresh_names()
        self.say(f"patched model saved as {out['name']}")
        return out


def foundry_dashboard(store: ModuleStore | str | None = None, cache=None, device: str = "auto",
                      poll: float = 1.0) -> Dashboard | W.Widget:
    """The dashboard over ``store`` (a :class:`ModuleStore` or a folder; default :func:`foundry.open_store`).

    A store folder that cannot be written gives a widget with the error message instead of a dashboard.
    """
    if not isinstance(store, ModuleStore):
        try:
            store = foundry.open_store(store)
        except StoreNotWritableError as exc:
            return W.HTML(f"<span style='color:#d62728'>StoreNotWritableError: {html.escape(str(exc))}</span>"
                          ).add_class("mt-message")
    return Dashboard(store, cache, device, poll)
