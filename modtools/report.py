"""Side-by-side numbers for a module and the model it came from: size, MACs, latency, accuracy."""
from __future__ import annotations

import torch
import torch.nn as nn

from . import data as D
from .metrics import count_macs, measure_latency
from .module import Module
from .train import predict


def module_accuracy(module: Module, test: D.ImageDataset, device: str = "auto") -> tuple[float, D.ImageDataset]:
    """Accuracy of a module on its own task, drawn from ``test`` (a data set over the source's classes).

    A detector module (one score per sample) is scored on a balanced "class vs rest" task with a
    0.5 threshold; a multi-class module on the subset task of its classes.
    """
    classes = module.task["classes"]
    if module.task.get("kind") == "detector":
        task = D.binary_task(test, classes[0], split="test")
        scores = predict(module.as_model(), task, device=device).squeeze(1)
        return float(((scores > 0.5).long() == task.labels).float().mean()), task
    task = D.subset_task(test, classes, "test")
    return float((predict(module.as_model(), task, device=device).argmax(1) == task.labels).float().mean()), task


def restricted_accuracy(model: nn.Module, test: D.ImageDataset, classes, device: str = "auto") -> float:
    """Accuracy of a full model on the sub-task of ``classes`` drawn from ``test``: argmax over
    those classes' logits only."""
    task = D.subset_task(test, classes, "test")
    logits = predict(model, task, device=device)[:, list(classes)]
    return float((logits.argmax(1) == task.labels).float().mean())


def model_accuracy_on(model: nn.Module, module: Module, task: D.ImageDataset, device: str = "auto") -> float:
    """The full model's accuracy on a module's task: argmax restricted to the task's classes
    (sub-task), or "argmax is the class" (detector)."""
    classes = module.task["classes"]
    logits = predict(model, task, device=device)
    pred = (logits.argmax(1) == classes[0]).long() if module.task.get("kind") == "detector" \
        else logits[:, classes].argmax(1)
    return float((pred == task.labels).float().mean())


def module_vs_model(model: nn.Module, module: Module, test: D.ImageDataset, batch_sizes=(1, 64),
                    latency_repeats: int = 20, device: str = "auto") -> dict:
    """Parameters, MACs, CPU latency per batch size and task accuracy of the module and its model."""
    shape = test.shape
    acc_module, task = module_accuracy(module, test, device)
    acc_model = model_accuracy_on(model, module, task, device)
    out = {"model": {"accuracy": acc_model, **count_macs(model.cpu(), shape)},
           "module": {"accuracy": acc_module, **count_macs(module.as_model().cpu(), shape)}}
    for key, net in (("model", model.cpu()), ("module", module.as_model().cpu())):
        for b in batch_sizes:
            out[key][f"latency_b{b}"] = measure_latency(net, shape, b, repeats=latency_repeats)["seconds"]
    threads = torch.get_num_threads()
    out["ratios"] = {k: out["module"][k] / out["model"][k] for k in out["model"]
                     if k not in ("unit", "accuracy") and out["model"][k]}
    out["threads"], out["task_size"] = threads, len(task)
    return out
