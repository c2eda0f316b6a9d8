"""Training loops as PyTorch users write them: Parameter registration, state dicts, learning-rate
schedulers against their closed forms, gradient clipping, ad.save / ad.load (and hostile files),
creation functions, and the demo's checkpoint / resume."""
import io
import json
import math
import zipfile

import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff import nn, optim
from pyautodiff.optim import lr_scheduler as S


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.ModuleList([nn.Linear(3, 4, seed=0), nn.Tanh()])
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 1, seed=1)})
        self.scale = nn.Parameter([2.0])
        self.register_buffer("running", ad.zeros(4))
        self.register_buffer("scratch", ad.ones(2), persistent=False)
        self.last_hidden = None           # any attribute: not state

    def forward(self, x):
        h = self.body[1](self.body[0](x))
        self.last_hidden = h              # the example: a tensor attribute is no parameter
        return self.heads["a"](h) * self.scale


def test_registration_follows_pytorch():
    m = Net()
    m(np.ones((2, 3)))
    assert isinstance(m.last_hidden, ad.Tensor) and m.last_hidden.requires_grad
    assert [n for n, _ in m.named_parameters()] == ["scale", "body.0.weight", "body.0.bias", "heads.a.weight",
                                                    "heads.a.bias"]
    assert [n for n, _ in m.named_buffers()] == ["running", "scratch"]
    assert [n for n, _ in m.named_modules()] == ["", "body", "body.0", "body.1", "heads", "heads.a"]
    assert [type(c).__name__ for c in m.children()] == ["ModuleList", "ModuleDict"]
    assert isinstance(m.body[0].weight, nn.Parameter) and m.body[0].weight.requires_grad
    assert type(m.body[0].weight * 2) is ad.Tensor
    with pytest.raises(TypeError, match="parameter"):
        m.scale = ad.tensor([1.0])        # PyTorch: nn.Parameter or None expected
    m.scale = None
    assert "scale" not in dict(m.named_parameters())
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("body", ad.zeros(1))


def test_state_dict_has_frozen_parameters_and_persistent_buffers():
    m = Net()
    m.body[0].weight.requires_grad = False               # frozen: still state
    sd = m.state_dict()
    assert list(sd) == ["scale", "running", "body.0.weight", "body.0.bias", "heads.a.weight", "heads.a.bias"]
    assert all(isinstance(v, ad.Tensor) and not v.requires_grad for v in sd.values())
    assert len(list(m.parameters())) == 5   # parameters() lists frozen ones too, as PyTorch
    with ad.no_grad():
        m.running.add_(3.0)
    m2 = Net()
    m2.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(m2.running.numpy(), np.full(4, 3.0))
    with pytest.raises(ValueError, match="dtype"):
        m2.load_state_dict(dict(sd, running=np.zeros(4, np.float32)))
    with pytest.raises(ValueError, match="shape"):
        m2.load_state_dict(dict(sd, running=np.zeros(5)))
    with pytest.raises(KeyError, match="running"):
        m2.load_state_dict({k: v for k, v in sd.items() if k != "running"})
    np.testing.assert_array_equal(m2.running.numpy(), np.full(4, 3.0))    # unchanged by the failures


def test_modes_requires_grad_apply_and_zero_grad():
    m = Net()
    assert m.training and m.eval() is m and not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())
    m.requires_grad_()
    order = []
    m.apply(lambda x: order.append(type(x).__name__))
    assert order[-1] == "Net" and order.index("Linear") < order.index("ModuleList")
    m(np.ones((1, 3))).sum().backward()
    m.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def _lrs(make, n, lr=0.1, groups=1):
    ps = [{"params": [ad.tensor([0.0], requires_grad=True)], "lr": lr * (i + 1)} for i in range(groups)]
    opt = optim.SGD(ps, lr=lr, momentum=0.9)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out, sched, opt


@pytest.mark.parametrize("make,closed", [
    (lambda o: S.StepLR(o, step_size=3, gamma=0.5), lambda e: 0.1 * 0.5 ** (e // 3)),
    (lambda o: S.MultiStepLR(o, milestones=[5, 2], gamma=0.1), lambda e: 0.1 * 0.1 ** ((e >= 2) + (e >= 5))),
    (lambda o: S.ExponentialLR(o, gamma=0.9), lambda e: 0.1 * 0.9 ** e),
    (lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=0.01),
     lambda e: 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * e / 10)) / 2),
    (lambda o: S.LambdaLR(o, lambda e: 1 / (e + 1)), lambda e: 0.1 / (e + 1)),
    (lambda o: S.LinearLR(o, start_factor=0.25, total_iters=4), lambda e: 0.1 * (0.25 + 0.75 * min(e, 4) / 4)),
])
def test_schedulers_follow_their_closed_forms_and_resume(make, closed):
    got, sched, opt = _lrs(make, 12)
    np.testing.assert_allclose(got, [closed(e) for e in range(12)], rtol=1e-14)
    # resume: a new optimizer and scheduler loaded from the state dicts continue the sequence
    later, _, _ = _lrs(make, 18)
    opt2 = optim.SGD([ad.tensor([0.0], requires_grad=True)], lr=0.1, momentum=0.9)
    opt2.load_state_dict(opt.state_dict())
    sched2 = make(opt2)
    sched2.load_state_dict(ad_roundtrip(sched.state_dict()))
    opt2.load_state_dict(opt.state_dict())
    cont = []
    for _ in range(6):
        cont.append(sched2.get_last_lr()[0])
        sched2.step()
    assert cont == later[12:]


def ad_roundtrip(obj):
    buf = io.BytesIO()
    ad.save(obj, buf)
    buf.seek(0)
    return ad.load(buf)


def test_one_cycle_lr_matches_pytorch_phases():
    got, _, opt = _lrs(lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=10), 10)
    # two phases, as PyTorch: up over steps 0..2 (pct_start 0.3 -> end 2), cosine down to 1/(25*1e4)
    def cos(start, end, pct):
        return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)
    expected = [cos(0.04, 1.0, e / 2) if e <= 2 else cos(1.0, 0.04 / 1e4, (e - 2) / 7) for e in range(10)]
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    o = optim.SGD([ad.tensor([0.0], requires_grad=True)], lr=0.1, momentum=0.9)
    sched = S.OneCycleLR(o, max_lr=1.0, total_steps=10)
    assert o.param_groups[0]["momentum"] == 0.95           # momentum falls while the rate rises
    sched.step()
    sched.step()
    assert o.param_groups[0]["momentum"] == pytest.approx(0.85) and sched.get_last_lr() == [1.0]
    with pytest.raises(ValueError, match="total_steps"):
        _lrs(lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=10), 12)
    a = optim.Adam([ad.tensor([0.0], requires_grad=True)])
    S.OneCycleLR(a, max_lr=0.1, epochs=2, steps_per_epoch=5)
    assert a.param_groups[0]["betas"] == (0.95, 0.999) and a.param_groups[0]["lr"] == pytest.approx(0.004)


def test_reduce_lr_on_plateau():
    opt = optim.SGD([ad.tensor([0.0], requires_grad=True)], lr=1.0)
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1, min_lr=0.2)
    lrs = []
    for metric in [5, 4, 4, 4, 4, 4, 4, 4, 4, 3, 3, 3]:
        sched.step(metric)
        lrs.append(opt.param_groups[0]["lr"])
    # two bad epochs in a row (> patience 1) halve the rate; the epoch after a cut is cooldown (its
    # bad count reset); 0.25 * 0.5 is below min_lr, so the last cut stops at 0.2
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.2]
    assert sched.get_last_lr() == [0.2]
    sd = ad_roundtrip(sched.state_dict())
    assert sd["best"] == 3 and sd["mode"] == "min"


def test_clip_grad_norm_and_value():
    a, b = ad.tensor([3.0, 0.0], requires_grad=True), ad.tensor([4.0], requires_grad=True)
    a.grad, b.grad = [3.0, 0.0], [4.0]
    total = nn.utils.clip_grad_norm_([a, b], max_norm=1.0)
    assert total.item() == 5.0
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(a.grad.numpy(), [3.0 * coef, 0.0], rtol=1e-15)
    np.testing.assert_allclose(b.grad.numpy(), [4.0 * coef], rtol=1e-15)
    assert nn.utils.clip_grad_norm_([a, b], max_norm=10.0).item() == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(b.grad.numpy(), [4.0 * coef], rtol=1e-15)       # below max_norm: unchanged
    assert nn.utils.clip_grad_norm_(a, 1.0, norm_type=math.inf).item() == pytest.approx(3 * coef)
    b.grad = [np.inf]
    with pytest.raises(RuntimeError, match="total norm"):
        nn.utils.clip_grad_norm_([b], 1.0, error_if_nonfinite=True)
    a.grad = [-3.0, 0.5]
    nn.utils.clip_grad_value_([a], 1.0)
    assert a.grad.tolist() == [-1.0, 0.5]


def test_save_load_round_trip(tmp_path):
    m = Net()
    m.body[0].bias.requires_grad = False
    with ad.no_grad():
        m.running.fill_(7.0)
    opt = optim.Adam(m.parameters(), lr=0.01)
    m(np.ones((2, 3))).sum().backward()
    opt.step()
    obj = {"model": m.state_dict(), "opt": opt.state_dict(), "epoch": 3, "note": "x", "none": None,
           "nums": [1.5, float("inf"), -0.0, 2 ** 80, True], "pair": (1, "a"), "arr": np.arange(3, dtype=np.int32),
           "w": ad.tensor([1.0], dtype=np.float32, requires_grad=True)}
    path = tmp_path / "state.npz"
    ad.save(obj, path)
    back = ad.load(path)
    assert back["epoch"] == 3 and back["note"] == "x" and back["none"] is None and back["pair"] == (1, "a")
    assert back["nums"][:2] == [1.5, float("inf")] and math.copysign(1, back["nums"][2]) == -1
    assert back["nums"][3] == 2 ** 80 and back["nums"][4] is True
    assert back["arr"].dtype == np.int32 and back["w"].dtype == np.float32 and back["w"].requires_grad
    m2 = Net()
    m2.load_state_dict(back["model"])
    for (k, v), (_, w) in zip(m.state_dict().items(), m2.state_dict().items()):
        np.testing.assert_array_equal(v.numpy(), w.numpy())
    opt2 = optim.Adam(m2.parameters(), lr=0.5)
    opt2.load_state_dict(back["opt"])
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(TypeError, match="cannot save"):
        ad.save({"f": lambda: 0}, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def _zip_with(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _npy(arr):
    b = io.BytesIO()
    np.save(b, arr, allow_pickle=True)
    return b.getvalue()


def _header(meta):
    return _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))


def test_hostile_files_are_value_errors(tmp_path):
    good = tmp_path / "good"
    ad.save({"w": ad.tensor([1.0, 2.0])}, good)
    data = good.read_bytes()
    ok = {"format": "pyautodiff.save", "version": 1, "root": {"t": "tensor", "a": "a0"}}
    cases = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "random": bytes(range(256)) * 4,
        "wrong magic": _zip_with({"__pyautodiff__.npy": _header(dict(ok, format="torch")),
                                  "a0.npy": _npy(np.ones(2))}),
        "future version": _zip_with({"__pyautodiff__.npy": _header(dict(ok, version=2)), "a0.npy": _npy(np.ones(2))}),
        "no header": _zip_with({"a0.npy": _npy(np.ones(2))}),
        "pickled object": _zip_with({"__pyautodiff__.npy": _header(dict(ok, root={"t": "ndarray", "a": "a0"})),
                                     "a0.npy": _npy(np.array([{"evil": 1}], dtype=object))}),
        "missing array": _zip_with({"__pyautodiff__.npy": _header(dict(ok, root={"t": "tensor", "a": "a7"}))}),
        "int tensor": _zip_with({"__pyautodiff__.npy": _header(ok), "a0.npy": _npy(np.ones(2, np.int64))}),
        "unknown node": _zip_with({"__pyautodiff__.npy": _header(dict(ok, root={"t": "function", "v": "os.system"}))}),
        "deep nesting": _zip_with({"__pyautodiff__.npy": _npy(np.frombuffer((
            '{"format": "pyautodiff.save", "version": 1, "root": ' + '{"t": "list", "v": [' * 200 + '{"t": "none"}' +
            ']}' * 200 + '}').encode(), np.uint8))}),
        "very deep nesting": _zip_with({"__pyautodiff__.npy": _npy(np.frombuffer((
            '{"format": "pyautodiff.save", "version": 1, "root": ' + '[' * 100000 + ']' * 100000 + '}').encode(),
            np.uint8))}),
        "plain npy": _npy(np.ones(3)),
    }
    for name, blob in cases.items():
        p = tmp_path / name.replace(" ", "_")
        p.write_bytes(blob)
        with pytest.raises(ValueError, match="load: .*not a"):
            ad.load(p)
    with pytest.raises(FileNotFoundError):
        ad.load(tmp_path / "missing")


def test_creation_functions():
    ad.manual_seed(7)
    a = ad.randn((2, 3), dtype=np.float32, requires_grad=True)
    b = ad.rand(4)
    ad.manual_seed(7)
    np.testing.assert_array_equal(ad.randn((2, 3), dtype=np.float32).numpy(), a.numpy())
    np.testing.assert_array_equal(ad.rand(4).numpy(), b.numpy())
    assert a.dtype == np.float32 and a.requires_grad and a.is_leaf
    assert np.all((b.numpy() >= 0) & (b.numpy() < 1))
    assert ad.arange(1, 7, 2).tolist() == [1.0, 3.0, 5.0] and ad.arange(3).dtype == np.float64
    assert ad.linspace(0, 1, 5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_array_equal(ad.eye(2, 3).numpy(), np.eye(2, 3))
    assert ad.empty((2, 2)).shape == (2, 2) and ad.full_like(a, 3.0).dtype == np.float32
    assert ad.randn_like(a).shape == (2, 3) and ad.rand_like(b, dtype="float32").dtype == np.float32
    assert ad.empty_like(b).shape == (4,)
    with pytest.raises(TypeError):
        ad.rand((2.5,))


def test_demo_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, capsys):
    from pyautodiff import demo
    common = ["--epochs", "3", "--hidden", "16", "--batch-size", "64"]
    assert demo.main(common + ["--save", str(tmp_path / "full")]) == 0
    straight = capsys.readouterr().out.splitlines()
    assert demo.main(common + ["--stop-after", "1", "--save", str(tmp_path / "part")]) == 0
    stopped = capsys.readouterr().out.splitlines()
    assert any(line.startswith("stopped after epoch 1 of 3") for line in stopped)
    assert demo.main(common + ["--resume", str(tmp_path / "part"), "--save", str(tmp_path / "part")]) == 0
    resumed = capsys.readouterr().out.splitlines()
    assert resumed[-1] == straight[-1] and resumed[-1].startswith("test accuracy:")
    epoch_lines = [ln.split("samples/s")[0].rsplit(None, 1)[0] for ln in straight if ln.startswith("epoch")]
    resumed_lines = [ln.split("samples/s")[0].rsplit(None, 1)[0] for ln in resumed if ln.startswith("epoch")]
    assert resumed_lines == epoch_lines[1:]
    full, part = ad.load(tmp_path / "full"), ad.load(tmp_path / "part")
    for k, v in full["model"].items():
        np.testing.assert_array_equal(v.numpy(), part["model"][k].numpy())
    for i, s in full["optimizer"]["state"].items():
        for k, v in s.items():
            np.testing.assert_array_equal(np.asarray(v), np.asarray(part["optimizer"]["state"][i][k]))
    with pytest.raises(SystemExit, match="--hidden 16"):
        demo.main(["--epochs", "3", "--hidden", "8", "--batch-size", "64", "--resume", str(tmp_path / "part")])
