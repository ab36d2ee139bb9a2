"""SeaM: target problems, masks and WRR, the selection rule, modules, costs, and the attacks."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from modtools import attacks as A
from modtools import data as D
from modtools import seam as S
from modtools import train as T
from modtools.errors import InvalidClassError, UnknownNameError
from modtools.module import Module

from conftest import ALL_ARCHS, tiny_model


@pytest.fixture(scope="module")
def trained():
    train = D.synthetic(4, 40, 16, 1, seed=0)
    test = D.synthetic(4, 20, 16, 1, seed=0, split="test")
    torch.manual_seed(0)
    model = tiny_model("resnet20", in_channels=1, num_classes=4)
    T.fit(model, train, None, T.FitConfig(epochs=5, batch_size=16), device="cpu", progress=False)
    return model.eval(), train, test


def test_target_problems_and_bad_inputs():
    names = D.FASHION_MNIST_CLASSES
    p = S.target_problem(7, names, "fashion-mnist")
    assert p.kind == "binary" and p.classes == [7] and p.name == "Sneaker vs rest"
    g = S.target_problem("footwear", names, "fashion-mnist")
    assert g.kind == "multiclass" and g.classes == [5, 7, 9]
    assert S.target_problem([1, 3], names).class_names == ["Trouser", "Dress"]
    assert len(S.group_classes("cifar100", "fish")) == 5
    with pytest.raises(InvalidClassError, match="class id 12.*0..9"):
        S.target_problem(12, names, "fashion-mnist")
    with pytest.raises(InvalidClassError, match="empty"):
        S.target_problem([], names)
    with pytest.raises(UnknownNameError, match="unknown class group 'shoes'.*tops, footwear, rest"):
        S.target_problem("shoes", names, "fashion-mnist")
    with pytest.raises(ValueError, match="alpha=-1.*>= 0"):
        S.SeaMConfig(alpha=-1)
    assert S.SeaMConfig.published("binary", "resnet20", "cifar10").lr_mask == 0.05
    assert [S.phase(e, S.SeaMConfig()) for e in range(10)] == ["head"] + ["joint"] * 4 + ["head"] + ["joint"] * 4


def test_binary_problem_data_is_balanced_and_seeded(trained):
    _, train, _ = trained
    p = S.target_problem(2, train.class_names)
    a, b = p.data(train, "train", seed=3), p.data(train, "train", seed=3)
    assert torch.equal(a.labels, b.labels) and int(a.labels.sum()) * 2 == len(a)


def test_all_ones_scores_change_nothing_and_wrr_counts_weights_and_biases(trained):
    model, train, _ = trained
    p = S.target_problem([0, 1], train.class_names)
    engine = S.Reengineer(model, p, S.SeaMConfig(), train.shape, "cpu", fold_norms=False)
    x = train.float_images()[:6]
    engine.refresh_alive()
    with torch.no_grad():
        assert torch.equal(engine.model(x), model(x))
    folded = S.Reengineer(model, p, S.SeaMConfig(), train.shape, "cpu")
    folded.refresh_alive()
    with torch.no_grad():   # BN folded into the convs: the same function up to float rounding
        torch.testing.assert_close(folded.model(x), model(x), rtol=1e-5, atol=1e-5)
    expected = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                   for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert sum(s.numel() for s in engine.weights.scores().values()) == expected   # no BN, no head
    assert float(engine.retention().detach()) == 1.0
    with torch.no_grad():
        next(iter(engine.weights.scores().values())).fill_(-1.0)
    first = next(iter(engine.weights.scores().values())).numel()
    assert float(engine.retention().detach()) == pytest.approx(1 - first / expected)
    engine.gating.remove()


@pytest.mark.parametrize("arch", ALL_ARCHS + ["tv:mobilenet_v3_small"])
def test_folded_norms_compute_what_the_model_with_its_bns_computes(arch):
    """Folding the frozen BNs into their convs changes nothing but rounding, dead kernels and the
    depthwise followers of dead kernels included; the step's cached ``score > 0`` changes nothing."""
    model = tiny_model(arch, in_channels=1, num_classes=4)
    p = S.target_problem(1, ["a", "b", "c", "d"])
    plain = S.Reengineer(model, p, S.SeaMConfig(), (1, 32, 32), "cpu", fold_norms=False)
    folded = S.Reengineer(model, p, S.SeaMConfig(), (1, 32, 32), "cpu")
    has_norms = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert bool(folded._folded) == has_norms and not any(isinstance(m, nn.BatchNorm2d) for m in folded.model.modules())
    g = torch.Generator().manual_seed(0)
    scores = plain.weights.scores()
    convs = {n.rsplit(".", 1)[0] for n, s in scores.items() if s.ndim == 4}
    with torch.no_grad():
        for name, score in scores.items():
            r = torch.rand(score.shape, generator=g) - 0.3
            if name.rsplit(".", 1)[0] in convs:
                r[:2] = -1.0                                   # two dead kernels (weights and bias) in every conv
            score.copy_(r)
            folded.weights.scores()[name].copy_(r)
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        plain.refresh_alive()
        expected = plain.forward(x)
        with folded.binarized():
            folded.refresh_alive()
            cached, wrr = folded.forward(x), float(folded.retention())
        folded.refresh_alive()
        uncached = folded.forward(x)
    assert folded._alive and set(folded._alive) == set(plain._alive)
    assert torch.equal(cached, uncached) and wrr == pytest.approx(float(plain.retention().detach()))
    scale = float(expected.abs().max())
    torch.testing.assert_close(uncached / scale, expected / scale, rtol=1e-4, atol=1e-5)
    # the masks as a result: its module (dead kernels removed) computes what the re-engineered model computes
    result = S.SeaMResult(folded.binary_masks(), {k: v.detach().clone() for k, v in folded.head.state_dict().items()},
                          [{"wrr": wrr, "val_accuracy": 1.0}], 1, True, 1.0, p, {"kernel_level": False}, 4)
    shape_only = D.synthetic(4, 1, 32, 1, seed=0)
    module = S.to_module(model, result, shape_only)
    with torch.no_grad():
        dense = S.reengineered_model(model, result, (1, 32, 32))(x)
        torch.testing.assert_close(module(x) / scale, dense / scale, rtol=1e-4, atol=1e-5)


def test_selection_rule_on_scripted_epochs():
    rule = S.SelectionRule(acc_pre=0.90)
    script = [(0.85, 0.95), (0.91, 0.8009), (0.92, 0.8004), (0.93, 0.8005), (0.89, 0.50), (0.95, 0.70), (0.90, 0.70)]
    out = [rule.observe(e + 1, a, w)[0] for e, (a, w) in enumerate(script)]
    # 1: below the bar; 2: the first to reach it; 3: same 0.1 % bucket, lower WRR, more accurate; 4: a larger
    # WRR is refused even when more accurate; 5: below the bar; 6: a lower bucket; 7: not more accurate
    assert out == [False, True, True, False, False, True, False] and rule.selected == 6
    never = S.SelectionRule(acc_pre=0.99)
    for e, (a, w) in enumerate([(0.7, 0.9), (0.8, 0.6), (0.75, 0.3)]):
        never.observe(e + 1, a, w)
    assert never.best_epoch is None and never.selected == 3          # backup: the largest acc − WRR
    stopper = S.SelectionRule(acc_pre=0.5, early_stop=2)
    stops = [stopper.observe(e + 1, a, w)[2] for e, (a, w) in enumerate([(0.6, 0.9), (0.4, 0.8), (0.4, 0.7)])]
    assert stops == [False, False, True]
    assert not any(S.SelectionRule(0.5, -1).observe(e, 0.1, 0.1)[2] for e in range(5))   # -1 never stops


def test_reengineering_module_round_trip_and_costs(trained, tmp_path):
    model, train, test = trained
    p = S.target_problem(1, train.class_names)
    tr, va, te = p.data(train, "train"), p.data(test, "validation"), p.data(test, "test")
    cfg = S.SeaMConfig(lr_mask=0.05, alpha=2.0, epochs=4, init_value=0.5, augment=False, batch_size=16)
    r1 = S.reengineer(model, p, tr, va, cfg, device="cpu")
    r2 = S.reengineer(model, p, tr, va, cfg, device="cpu")
    assert all(torch.equal(r1.masks[k], r2.masks[k]) for k in r1.masks)          # seeded and deterministic
    assert r1.wrr < 1.0 and 1 <= r1.selected_epoch <= 4
    assert [h["phase"] for h in r1.history] == ["head", "joint", "joint", "joint"]
    dense = S.reengineered_model(model, r1, tr.shape)
    module = S.to_module(model, r1, tr)
    x = te.float_images()
    with torch.no_grad():
        torch.testing.assert_close(module(x), dense(x), atol=1e-5, rtol=1e-4)     # dead kernels removed exactly
    folder = module.save(tmp_path / "seam")
    from modtools.io import load_tensors
    stored = load_tensors(folder / "weights.safetensors")
    # pruned weights are exact zeros: the stored masked layers hold exactly the kept weights as non-zeros
    # (which layers lose weights varies with the CPU's numerics, so count over all of them)
    assert all("network." + k in stored for k in r1.masks)
    nonzero = sum(int((stored["network." + k] != 0).sum()) for k in r1.masks)
    total = sum(r1.masks[k].numel() for k in r1.masks)
    assert nonzero == S.kept_weights(r1, model) < total
    again = Module.load(folder, model=model)
    with torch.no_grad():
        assert torch.equal(again(x), module(x))
    card = again.card()
    assert card["approach"] == "seam" and card["metrics"]["wrr"] == pytest.approx(r1.wrr)
    assert card["task"]["kind"] == "binary" and card["metrics"]["kept_weights"] > 0
    costs = S.cost_report(model, r1, module, tr.shape, batch_size=8, repeats=2)
    # pruned weights cut the nonzero MACs; removing dead kernels never adds any (the new head may add a few
    # over the original, so the structured ratio can exceed 1 when no whole kernel died)
    assert costs["macs"]["nonzero"] < costs["macs"]["dense"] and costs["macs"]["structured"] <= costs["macs"]["dense"]
    assert costs["macs_ratio_structured"] == pytest.approx(costs["macs"]["structured"] / costs["macs"]["original"])
    assert costs["latency_seconds"]["structured"] > 0


def test_kernel_level_variant_is_structured(trained):
    model, train, test = trained
    p = S.target_problem([0, 2, 3], train.class_names)
    tr, va = p.data(train, "train"), p.data(test, "validation")
    cfg = S.SeaMConfig(lr_mask=0.2, alpha=3.0, epochs=3, init_value=0.3, augment=False, batch_size=16,
                       kernel_level=True)
    r = S.reengineer(model, p, tr, va, cfg, device="cpu")
    module = S.to_module(model, r, tr)
    dense = S.reengineered_model(model, r, tr.shape)
    x = va.float_images()
    with torch.no_grad():
        torch.testing.assert_close(module(x), dense(x), atol=1e-5, rtol=1e-4)
    assert all(v.ndim == 1 for v in r.masks.values())


def test_pgd_keeps_its_budget_and_lowers_accuracy(trained):
    model, _, test = trained
    x, y = test.float_images(), test.labels
    g = torch.Generator().manual_seed(0)
    adv = A.pgd(model, x, A.classification_loss(y), eps=0.1, steps=10, step_size=0.03, generator=g)
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert torch.equal(A.pgd(model, x, A.classification_loss(y), eps=0.0), x)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
        attacked = float((model(adv).argmax(1) == y).float().mean())
    assert attacked < clean
    fg = A.fgsm(model, x, A.classification_loss(y), eps=0.05)
    assert float((fg - x).abs().max()) <= 0.05 + 1e-6
    with pytest.raises(ValueError, match="eps=1.5"):
        A.pgd(model, x, A.classification_loss(y), eps=1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        A.pgd(model, x * 3, A.classification_loss(y), eps=0.1)
    feat = A.feature_loss(torch.tensor([[1000.0, 0.0, 0.0]]))
    assert float(feat) == 0.0 and float(A.feature_loss(torch.zeros(1, 3))) < 0


def test_defect_inheritance_rate_by_hand():
    labels = torch.tensor([0, 1, 2, 3, 0])
    clean = torch.tensor([0, 1, 2, 0, 0])     # 4 correct
    adv = torch.tensor([0, 2, 2, 3, 1])       # of those, samples 1 and 4 are turned wrong
    assert A.defect_inheritance_rate(clean, adv, labels) == pytest.approx(0.5)
    assert A.defect_inheritance_rate(torch.ones(3, dtype=torch.long), torch.zeros(3, dtype=torch.long),
                                     torch.zeros(3, dtype=torch.long)) == 0.0


def test_pgd_matches_torchattacks_when_installed(trained):
    ta = pytest.importorskip("torchattacks")
    model, _, test = trained
    x, y = test.float_images(), test.labels
    ours = A.pgd(model, x, A.classification_loss(y), eps=8 / 255, step_size=2 / 255, steps=10, random_start=False)
    theirs = ta.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)(x, y)
    with torch.no_grad():
        a = float((model(ours).argmax(1) == y).float().mean())
        b = float((model(theirs).argmax(1) == y).float().mean())
    assert abs(a - b) <= 0.05


def test_one_reengineering_run_serves_every_threshold(trained):
    from modtools import seam_defects as SD

    model, train, _ = trained
    cfg = SD.DefectConfig(max_reengineer_epochs=3, lr_mask=0.1, alpha=2.0, init_value=0.2, batch_size=32)
    sweep = SD.reengineer_at_thresholds(model, train, [0.05, 0.02, 0.99], cfg, device="cpu")
    for t in (0.02, 0.05):
        masks, history = SD.reengineer_convs(model, train, t, cfg, device="cpu")
        assert all(torch.equal(masks[k], sweep[t][0][k]) for k in masks)
        assert history[-1]["wrr"] == pytest.approx(sweep[t][1][-1]["wrr"])
        assert 1 - history[-1]["wrr"] >= t
    masks, history = sweep[0.99]                       # never reached: the masks after the last epoch
    assert len(history) == 3 and 1 - history[-1]["wrr"] < 0.99
    with pytest.raises(ValueError, match="threshold=1.5"):
        SD.reengineer_at_thresholds(model, train, [0.5, 1.5], cfg, device="cpu")


def test_stacked_problems_match_one_engine_each(trained):
    """The batched pass the benchmark times computes what K separate re-engineerings compute."""
    model, train, _ = trained
    scores, weight, bias = S.stacked_problems(model, 3, init_value=1.0)
    with torch.no_grad():                                 # problem 1 loses the first conv's weights
        first = next(iter(scores))
        scores[first][1].fill_(-1.0)
    x = train.float_images()[:12].view(3, 4, *train.shape)
    logits, wrr = S.stacked_forward(model, scores, weight, bias, x)
    assert logits.shape == (3, 4, 2) and wrr.shape == (3,)
    for k in range(3):
        engine = S.Reengineer(model, S.target_problem(k, train.class_names), S.SeaMConfig(), train.shape, "cpu")
        with torch.no_grad():
            for name, s in engine.weights.scores().items():
                s.copy_(scores[name][k])
            engine.head[1].weight.copy_(weight[k])
            engine.head[1].bias.copy_(bias[k])
            assert torch.allclose(engine.forward(x[k]), logits[k], atol=1e-5)   # no dead kernel: no gating
            assert float(engine.retention()) == pytest.approx(float(wrr[k]))
        engine.gating.remove()
    (logits.sum() + wrr.sum()).backward()                 # the straight-through gradient reaches every score
    assert all(s.grad is not None and s.grad.shape == s.shape for s in scores.values())
