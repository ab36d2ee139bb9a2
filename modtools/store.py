"""The module store: a folder of module folders with a searchable index.

Layout of a store folder::

    index.json               one summary per module (rebuilt from the cards when missing or corrupt)
    modules/<name>/          a module folder (``card.json`` + ``weights.safetensors``, see ``modtools.module``)
    jobs/<id>/               background jobs (``modtools.jobs``)
    downloads/<name>.zip     modules packed for download

Every write is atomic (temporary file or folder, then rename) and index updates hold a file lock,
so a job process and the dashboard can write at the same time. A module name is a plain file name
(letters, digits, ``.``, ``_``, ``+``, ``-``), so no name can reach outside the store.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import threading
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch.nn as nn

from .errors import (CheckpointError, CorruptCardError, ModuleMismatchError, InvalidNameError, ModuleNotInStoreError, NameConflictError,
                     NoMatchError, SourceModelMissingError, StoreNotWritableError)
from .io import atomic_write_bytes, atomic_write_json, load_tensors, state_hash
from .metrics import count_macs
from .module import Module

INDEX_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
CARD_KEYS = ("name", "base_model", "approach", "task", "kernels", "weights")


def check_name(name: str, what: str = "module name") -> str:
    """Return ``name`` if it is a plain file name, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise InvalidNameError(f"{what} {name!r} is not allowed: use 1 to 128 letters, digits, '.', '_', '+' or '-', "
                               "starting with a letter or digit, without '..'")
    return name


def slug(text: str) -> str:
    """A valid module name made from any text."""
    out = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._-+") or "module"
    return out.replace("..", ".")[:128]


@dataclass
class Entry:
    """What the index and a search result hold about one module."""

    name: str
    class_names: list[str]
    classes: list[int]
    dataset: str
    arch: str
    approach: str
    accuracy: float | None
    retention: float | None          # KRR, or WRR for weight-level approaches (SeaM)
    retention_kind: str              # "KRR" | "WRR"
    macs: int | None
    params: int | None
    size_bytes: int
    created: str
    source_key: str = ""
    lineage: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_card(cls, card: dict, folder: Path) -> "Entry":
        metrics = card.get("metrics", {})
        task = card["task"]
        wrr = metrics.get("wrr")
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        acc = metrics.get("accuracy", metrics.get("test_accuracy"))
        return cls(name=card["name"], class_names=list(task.get("class_names", [])),
                   classes=list(task.get("classes", [])), dataset=task.get("dataset", ""),
                   arch=card["base_model"].get("arch", ""), approach=card.get("approach", ""),
                   accuracy=None if acc is None else float(acc),
                   retention=float(wrr) if wrr is not None else card.get("kernel_retention"),
                   retention_kind="WRR" if wrr is not None else "KRR",
                   macs=metrics.get("macs"), params=metrics.get("params"), size_bytes=size,
                   created=card.get("created", ""), source_key=card["base_model"].get("cache_key", ""),
                   lineage=list(card.get("lineage", [])))


def read_card(folder: Path) -> dict:
    """The card of a module folder, checked for the keys the store needs (:class:`CorruptCardError`)."""
    path = folder / "card.json"
    if not path.is_file():
        raise CorruptCardError(f"module {folder.name!r}: {path} is missing")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCardError(f"module {folder.name!r}: {path} is not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise CorruptCardError(f"module {folder.name!r}: {path} holds a {type(card).__name__}, not a card")
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise CorruptCardError(f"module {folder.name!r}: {path} lacks {', '.join(map(repr, missing))}; "
                               "it is not a modtools module card")
    return card


class ModuleStore:
    """A folder of modules with an index; see the module docstring.

    Raises :class:`StoreNotWritableError` when the folder cannot be created or written.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().absolute()
        self._rlock, self._depth, self._lock_file = threading.RLock(), 0, None
        try:
            for sub in ("modules", "jobs", "downloads"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreNotWritableError(f"the store folder {str(self.root)!r} cannot be written: "
                                        f"{exc.strerror or exc}; choose a folder you can write") from None

    def __repr__(self) -> str:
        return f"ModuleStore({str(self.root)!r}, {len(self.entries())} modules)"

    # -- paths ----------------------------------------------------------------------------
    @property
    def modules_dir(self) -> Path:
        return self.root / "modules"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def inside(self, path: Path) -> Path:
        """``path`` resolved, if it lies inside the store; else :class:`InvalidNameError`."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise InvalidNameError(f"{str(path)!r} lies outside the store {str(self.root)!r}")
        return resolved

    def folder(self, name: str) -> Path:
        """The folder of module ``name`` (which need not exist yet)."""
        return self.inside(self.modules_dir / check_name(name))

    def names(self) -> list[str]:
        return sorted(self._index()["modules"])

    def __contains__(self, name: str) -> bool:
        return (self.modules_dir / check_name(name) / "card.json").is_file()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the store (index updates, name reservations), across processes;
        re-entrant within this store object."""
        with self._rlock:
            if self._depth == 0:
                self._lock_file = open(self.root / ".lock", "a")
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                    self._lock_file.close()

    # -- the index ------------------------------------------------------------------------
    def rebuild_index(self) -> dict:
        """Rebuild ``index.json`` from the cards; unreadable cards are listed under ``corrupt``."""
        with self.lock():
            return self._rebuild()

    def _rebuild(self) -> dict:
        modules, corrupt = {}, {}
        for folder in sorted(p for p in self.modules_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                modules[folder.name] = Entry.from_card(read_card(folder), folder).to_dict()
            except CorruptCardError as exc:
                corrupt[folder.name] = str(exc)
        index = {"version": INDEX_VERSION, "modules": modules, "corrupt": corrupt}
        atomic_write_json(self.index_path, index)
        return index

    def _index(self) -> dict:
        try:
            index = json.loads(self.index_path.read_text())
            if index.get("version") != INDEX_VERSION or not isinstance(index.get("modules"), dict):
                raise ValueError("unknown index layout")
            return index
        except (OSError, ValueError, AttributeError):
            return self.rebuild_index()

    def _update(self, name: str, entry: Entry | None) -> None:
        with self.lock():
            index = self._index()
            index.setdefault("corrupt", {}).pop(name, None)
            if entry is None:
                index["modules"].pop(name, None)
            else:
                index["modules"][name] = entry.to_dict()
            atomic_write_json(self.index_path, index)

    def entries(self) -> list[Entry]:
        """Every module's summary, newest first."""
        mods = self._index()["modules"].values()
        return sorted((Entry(**e) for e in mods), key=lambda e: (e.created, e.name), reverse=True)

    def corrupt(self) -> dict[str, str]:
        """Module folders whose card could not be read, with the reason."""
        return dict(self._index().get("corrupt", {}))

    # -- actions --------------------------------------------------------------------------
    def add(self, module: Module, name: str | None = None, source_key: str = "", overwrite: bool = False) -> Entry:
        """Save ``module`` into the store under ``name`` (default: the module's name).

        Its MACs and parameters are measured and added to its metrics; ``source_key`` is the model
        cache key of its source model (recorded in the card, used to find the source again).

        Raises:
            NameConflictError: the name is taken and ``overwrite`` is false.
        """
        name = check_name(name or slug(module.name))
        folder = self.folder(name)
        if folder.exists() and not overwrite:
            raise NameConflictError(f"the store already has a module named {name!r}; choose another name "
                                    "or delete it first")
        module.name = name
        if source_key:
            module.source = {**module.source, "cache_key": source_key}
        shape = module.source.get("input_shape")
        if shape and ("macs" not in module.metrics or "params" not in module.metrics):
            cost = count_macs(module.as_model().cpu(), shape)
            module.metrics = {**module.metrics, "macs": int(cost["macs"]), "params": int(cost["params"])}
        module.save(folder)
        entry = Entry.from_card(read_card(folder), folder)
        self._update(name, entry)
        return entry

    def card(self, name: str) -> dict:
        """The full card of module ``name``."""
        return read_card(self._existing(name))

    def load(self, name: str, model: nn.Module | None = None, device: str = "cpu") -> Module:
        """Load module ``name`` (see :meth:`Module.load`); a damaged module raises :class:`CorruptCardError`."""
        folder = self._existing(name)
        card = read_card(folder)
        if card.get("kind") in ("composition", "patched"):
            raise ModuleMismatchError(f"module {name!r} is a {card['kind']} of {len(card.get('parts', []))} module(s), "
                                   "not a single module; load it with modtools.foundry.load_composition")
        try:
            return Module.load(folder, model=model, device=device)
        except CorruptCardError:
            raise
        except CheckpointError as exc:
            raise CorruptCardError(f"module {name!r} is damaged: {exc}") from None

    def delete(self, name: str) -> None:
        """Remove module ``name`` and its download."""
        folder = self._existing(name)
        trash = folder.with_name(f".{name}.deleted")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        (self.root / "downloads" / f"{name}.zip").unlink(missing_ok=True)
        self._update(name, None)

    def update_metrics(self, name: str, metrics: dict) -> Entry:
        """Merge ``metrics`` into the card of module ``name`` (the weights are unchanged)."""
        folder = self._existing(name)
        card = read_card(folder)
        card["metrics"] = {**card.get("metrics", {}), **metrics}
        atomic_write_json(folder / "card.json", card)
        entry = Entry.from_card(card, folder)
        self._update(name, entry)
        return entry

    def search(self, text: str = "", dataset: str | None = None, arch: str | None = None,
               approach: str | None = None, min_accuracy: float | None = None, max_retention: float | None = None,
               max_macs: int | None = None, max_size_bytes: int | None = None) -> list[Entry]:
        """Modules whose class names (or module name) contain ``text`` (case-insensitive), filtered.

        Raises:
            NoMatchError: nothing matches; the message lists the classes, data sets, models and
                approaches the store holds.
        """
        needle = (text or "").strip().lower()
        out = []
        for e in self.entries():
            hay = [n.lower() for n in e.class_names] + [e.name.lower()]
            if needle and not any(needle in h for h in hay):
                continue
            if dataset and e.dataset != dataset or arch and e.arch != arch or approach and e.approach != approach:
                continue
            if min_accuracy is not None and (e.accuracy is None or e.accuracy < min_accuracy):
                continue
            if max_retention is not None and (e.retention is None or e.retention > max_retention):
                continue
            if max_macs is not None and (e.macs is None or e.macs > max_macs):
                continue
            if max_size_bytes is not None and e.size_bytes > max_size_bytes:
                continue
            out.append(e)
        if not out:
            raise NoMatchError(self._no_match_message(needle, dataset, arch, approach))
        return out

    def _no_match_message(self, needle: str, dataset, arch, approach) -> str:
        entries = self.entries()
        asked = ", ".join(f"{k}={v!r}" for k, v in (("text", needle), ("dataset", dataset), ("arch", arch),
                                                    ("approach", approach)) if v) or "no filter"
        if not entries:
            return f"no module matches ({asked}): the store {str(self.root)!r} is empty; decompose a model first"
        values = lambda f: ", ".join(sorted({str(x) for e in entries for x in f(e)}))  # noqa: E731
        return (f"no module matches ({asked}). The store holds {len(entries)} module(s): classes "
                f"{values(lambda e: e.class_names)}; data sets {values(lambda e: [e.dataset])}; models "
                f"{values(lambda e: [e.arch])}; approaches {values(lambda e: [e.approach])}")

    def zip_bytes(self, name: str) -> bytes:
        """Module ``name`` as a zip (``card.json`` + ``weights.safetensors``), in memory."""
        folder = self._existing(name)
        card = read_card(folder)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(folder / "card.json", "card.json")
            zf.write(folder / card["weights"]["file"], card["weights"]["file"])
        return buf.getvalue()

    def export_zip(self, name: str) -> Path:
        """Write module ``name`` as ``downloads/<name>.zip`` (atomically) and return its path."""
        return atomic_write_bytes(self.inside(self.root / "downloads" / f"{check_name(name)}.zip"),
                                  self.zip_bytes(name))

    def import_zip(self, path: str | os.PathLike, name: str | None = None) -> Entry:
        """Add a module from a zip made by :meth:`export_zip`; members other than the two files are refused."""
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            if members != {"card.json", "weights.safetensors"}:
                raise CorruptCardError(f"{path} is not a module zip: it holds {sorted(members)}, expected "
                                       "card.json and weights.safetensors")
            card = json.loads(zf.read("card.json"))
            name = check_name(name or card.get("name", ""))
            folder = self.folder(name)
            if folder.exists():
                raise NameConflictError(f"the store already has a module named {name!r}")
            tmp = folder.with_name(f".{name}.import")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for m in members:
                (tmp / m).write_bytes(zf.read(m))
        card["name"] = name
        atomic_write_json(tmp / "card.json", card)
        os.replace(tmp, folder)
        entry = Entry.from_card(read_card(folder), folder)
        self._update(name, entry)
        return entry

    def source_model(self, name: str, cache: str | os.PathLike | None = None) -> nn.Module:
        """The source model of module ``name``, from the model cache, checked against the card's SHA-256.

        Raises:
            SourceModelMissingError: the card names no cache key, or the cache lacks that model.
        """
        from .models import build_from_config
        from .train import default_cache

        base = self.card(name)["base_model"]
        key = base.get("cache_key", "")
        folder = Path(cache or default_cache()) / key if key else None
        if folder is None or not (folder / "weights.safetensors").is_file():
            where = f"cache key {key!r} under {str(Path(cache or default_cache()))!r}" if key else "no cache key"
            raise SourceModelMissingError(f"the source model of module {name!r} ({base.get('arch')}, SHA-256 "
                                          f"{base.get('sha256', '')[:16]}…) is missing: {where}; "
                                          "train it again or choose another module")
        model = build_from_config(base["config"])
        model.load_state_dict(load_tensors(folder / "weights.safetensors"))
        if state_hash(model) != base.get("sha256"):
            raise SourceModelMissingError(f"the model cached as {key!r} is not the source model of module {name!r}: "
                                          "its weights hash differently (it was retrained)")
        return model.eval()

    def _existing(self, name: str) -> Path:
        folder = self.folder(name)
        if not folder.is_dir():
            have = self.names()
            raise ModuleNotInStoreError(f"no module named {name!r} in the store; it holds "
                                        f"{', '.join(have) if have else 'no modules'}")
        return folder


def retention_by_layer(card: dict) -> dict[str, float]:
    """Fraction of kernels kept per layer, from a card."""
    return {k: v["kept"] / max(v["total"], 1) for k, v in card["kernels"].items()}


def reproduce_code(card: dict, store_root: str | os.PathLike) -> str:
    """Python a user can paste into a notebook to load (and re-make) the module of ``card``."""
    from .approaches import approach_params, list_approaches

    task, approach = card["task"], card.get("approach", "")
    shown = {p.name for p in approach_params(approach)} if approach in list_approaches() else set()
    params = {k: v for k, v in card.get("config", {}).items() if k in shown}
    shape = ", ".join(map(str, card["base_model"].get("input_shape", [])))
    lines = ["from modtools import foundry",
             f"store = foundry.open_store({str(store_root)!r})",
             f"module = store.load({card['name']!r})   # module(x): outputs for a batch x of shape (N, {shape})"]
    if shown:
        lines += ["", "# To make it again (a background job; foundry.wait(store, job) waits for it):",
                  f"job = foundry.decompose(store, {approach!r}, {list(task.get('classes', []))!r},  # "
                  f"{', '.join(task.get('class_names', []))}",
                  f"                        model_key={card['base_model'].get('cache_key', '')!r},",
                  f"                        params={params!r}, name='{card['name']}-again')"]
    return "\n".join(lines)


def entries_table(entries: Sequence[Entry]) -> list[dict]:
    """Search results as rows for a table."""
    return [{"name": e.name, "classes": ", ".join(e.class_names), "approach": e.approach, "model": e.arch,
             "dataset": e.dataset, "accuracy": e.accuracy, e.retention_kind: e.retention, "MACs": e.macs,
             "size (kB)": round(e.size_bytes / 1024, 1), "created": e.created} for e in entries]
