"""Deep models: the registry (cnn, lenet5, import paths), TorchModel's batching paths, dropout streams,
evaluation mode, BatchNorm refusal, initialisation, and training on real images.

Every gradient is checked in float64 against a plain reference written here: one worker at a time, the
network's forward pass spelled out with torch.nn.functional and differentiated by autograd, with dropout
masks drawn by the documented rule (``torch.rand(b, *shape, generator=g_i) < 1 - p``, in forward order).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byzrsa.data import load_dataset
from byzrsa.engines.common import Problem
from byzrsa.errors import ConfigError
from byzrsa.models import MODELS, SoftmaxRegression, TorchModel, build_model, evaluate

F64 = torch.float64
SHAPE = (1, 28, 28)
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the simulator runs: on a shared 2-core machine, 2 threads can be many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def gens(m: int, seed: int = 10) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(m)]


def batch(model, m: int = 3, b: int = 4, shared: bool = False, shape=SHAPE):
    """Distinct (or shared) float64 parameters near the model's start, images and labels."""
    w0 = model.init(torch.Generator().manual_seed(1), F64)
    g = torch.Generator().manual_seed(2)
    w = w0.expand(m, -1) if shared else w0 + 0.05 * torch.randn(m, model.dim, generator=g, dtype=F64)
    x = torch.rand(m, b, *shape, generator=g, dtype=F64)
    y = torch.randint(0, 10, (m, b), generator=g)
    return w, x, y


def split(flat: torch.Tensor, model: TorchModel) -> list[torch.Tensor]:
    return [t.view(s) for t, s in zip(torch.split(flat, model._sizes), model._shapes)]


def dropout_mask(shape: tuple[int, ...], p: float, gen: torch.Generator) -> torch.Tensor:
    """The documented rule: uniform float32 draws below 1 - p, scaled by 1 / (1 - p)."""
    return (torch.rand(shape, generator=gen) < 1 - p).to(F64) / (1 - p)


def cnn_forward(params, x, gen):
    c1w, c1b, c2w, c2b, f1w, f1b, f2w, f2b = params
    h = F.max_pool2d(F.relu(F.conv2d(F.relu(F.conv2d(x, c1w, c1b)), c2w, c2b)), 2)
    if gen is not None:
        h = h * dropout_mask(tuple(h.shape), 0.25, gen)  # first dropout call: (b, 64, 12, 12)
    h = F.relu(F.linear(h.flatten(1), f1w, f1b))
    if gen is not None:
        h = h * dropout_mask(tuple(h.shape), 0.5, gen)  # second: (b, 128)
    return F.linear(h, f2w, f2b)


def lenet5_forward(params, x, gen):
    c1w, c1b, c3w, c3b, f5w, f5b, f6w, f6b, ow, ob = params
    h = F.max_pool2d(F.relu(F.conv2d(x, c1w, c1b, padding=2)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, c3w, c3b)), 2)
    h = F.relu(F.linear(h.flatten(1), f5w, f5b))
    return F.linear(F.relu(F.linear(h, f6w, f6b)), ow, ob)


def mlp_forward(params, x, gen):
    w1, b1, w2, b2 = params
    return F.linear(F.relu(F.linear(x.flatten(1), w1, b1)), w2, b2)


FORWARD = {"cnn": cnn_forward, "lenet5": lenet5_forward, "mlp": mlp_forward}


def reference(name, model, w, x, y, generators):
    """Per-worker autograd on the spelled-out network: losses (m,) and gradients (m, d)."""
    losses, grads = [], []
    for i in range(w.shape[0]):
        flat = w[i].detach().clone().requires_grad_()
        loss = F.cross_entropy(FORWARD[name](split(flat, model), x[i], generators[i] if generators else None), y[i])
        (g,) = torch.autograd.grad(loss, flat)
        losses.append(loss.detach())
        grads.append(g)
    return torch.stack(losses), torch.stack(grads)


# --------------------------------------------------------------------------- registry and shapes


def test_registered_networks_and_their_sizes():
    assert {"softmax", "mlp", "cnn", "lenet5"} <= set(MODELS)
    cnn = build_model("cnn", SHAPE, 10)
    assert cnn.dim == 1_199_882 and cnn.stochastic  # the PyTorch MNIST example: 9216 -> 128 -> 10
    assert [tuple(s) for s in cnn._shapes][4] == (128, 9216)
    lenet = build_model("lenet5", SHAPE, 10)
    assert lenet.dim == 61_706 and not lenet.stochastic  # 400 -> 120 -> 84 -> 10
    assert build_model("mlp", SHAPE, 10, {"hidden": 16}).dim == 784 * 16 + 16 + 16 * 10 + 10
    with torch.no_grad():
        start = cnn.init(torch.Generator().manual_seed(0), F64)
        assert cnn.logits(start, torch.rand(2, *SHAPE, dtype=F64)).shape == (2, 10)


@pytest.mark.parametrize("name, shape, needs", [("cnn", (20,), "image inputs"), ("lenet5", (1, 8, 8), "12 x 12")])
def test_conv_nets_refuse_inputs_they_cannot_take(name, shape, needs):
    with pytest.raises(ConfigError, match=needs) as info:
        build_model(name, shape, 10)
    assert "\n" not in str(info.value)


def test_unknown_model_is_one_line_and_mentions_import_paths():
    with pytest.raises(ConfigError) as info:
        build_model("resnet", SHAPE, 10)
    msg = str(info.value)
    assert "unknown model 'resnet'" in msg and "cnn" in msg and "package.module:Factory" in msg and "\n" not in msg
    assert "resnet" not in MODELS and "pkg.mod:Factory" in MODELS and "pkg:" not in MODELS


def test_batching_option_is_checked():
    with pytest.raises(ConfigError, match="batching"):
        build_model("cnn", SHAPE, 10, {"batching": "fast"})
    with pytest.raises(ConfigError, match="chain"):
        build_model("cnn", SHAPE, 10, {"batching": "chain"})


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A package-less module on sys.path holding user factories."""
    (tmp_path / "my_nets.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        from byzrsa.models import SoftmaxRegression

        def Tiny(input_shape, num_classes, width=8, scale=1.0, *, act="relu", extra=None):
            assert extra in (None, [1, 2])
            n = 1
            for s in input_shape:
                n *= s
            return nn.Sequential(nn.Flatten(), nn.Linear(n, width), nn.Tanh() if act == "tanh" else nn.ReLU(),
                                 nn.Linear(width, num_classes))

        class Convy(nn.Module):
            def __init__(self, input_shape, num_classes, groups: int = 2):
                super().__init__()
                self.conv = nn.Conv2d(input_shape[0], 4, 3)
                self.norm = nn.GroupNorm(groups, 4)
                self.head = nn.Linear(4 * (input_shape[1] - 2) * (input_shape[2] - 2), num_classes)
            def forward(self, x):
                return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))

        def Needs(input_shape, num_classes, depth):
            return Tiny(input_shape, num_classes, width=depth)

        def Normed(input_shape, num_classes):
            return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(1352, num_classes))

        def Plain(input_shape, num_classes):
            return SoftmaxRegression(784, num_classes)

        def Broken(input_shape, num_classes):
            raise RuntimeError("no GPU here")

        def Wrong(input_shape, num_classes):
            return 42

        NOT_CALLABLE = 3
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_nets"
    sys.modules.pop("my_nets", None)


@pytest.mark.slow
def test_user_factory_by_import_path(user_module):
    model = build_model(f"{user_module}:Tiny", SHAPE, 10, {"width": "5", "act": "tanh"})  # strings coerced
    assert isinstance(model, TorchModel) and model.dim == 784 * 5 + 5 + 5 * 10 + 10
    assert isinstance(model.module[2], nn.Tanh) and model._path(torch.device("cpu")) == "chain"  # Tanh is a chain layer
    assert build_model(f"{user_module}:Tiny", SHAPE, 10, {"extra": [1, 2]}).dim == 784 * 8 + 8 + 90  # passed as is
    entry = MODELS[f"{user_module}:Tiny"]
    typed = [(o.name, o.type, o.default) for o in entry.options]
    assert typed == [("width", int, 8), ("scale", float, 1.0), ("act", str, "relu")]
    conv = build_model(f"{user_module}:Convy", SHAPE, 10, {"groups": 4})
    w, x, y = batch(conv, shared=False)
    torch.testing.assert_close(conv.grad(w, x, y), TorchModel(conv.module, 10, batching="vmap").grad(w, x, y))
    assert isinstance(build_model(f"{user_module}:Plain", SHAPE, 10), SoftmaxRegression)


@pytest.mark.parametrize("name, options, match", [
    ("my_nets:Tiny", {"depth": 3}, "has no option 'depth'; its options are: width, scale, act, extra"),
    ("my_nets:Tiny", {"width": 2.5}, "must be an integer"),
    ("my_nets:Needs", {}, "needs option 'depth'"),
    ("my_nets:Normed", {}, "GroupNorm or LayerNorm"),
    ("my_nets:Broken", {}, "failed to build .*RuntimeError: no GPU here"),
    ("my_nets:Wrong", {}, "returned int, not a torch.nn.Module"),
    ("my_nets:NOT_CALLABLE", {}, "not callable"),
    ("my_nets:Missing", {}, "has no attribute 'Missing'"),
    ("no_such_package.nets:Net", {}, "cannot import 'no_such_package.nets' .*PYTHONPATH"),
    (":Net", {}, "not an import path"),
])
def test_user_factory_errors_are_one_line(user_module, name, options, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_model(name, SHAPE, 10, options)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("shared", [False, True], ids=["distinct", "shared"])
@pytest.mark.parametrize("name, batching", [
    ("mlp", "chain"), ("mlp", "vmap"), ("mlp", "loop"),
    ("lenet5", "vmap"), ("lenet5", "loop"), ("cnn", "vmap"), ("cnn", "loop"),
])
@pytest.mark.slow
def test_every_path_matches_the_reference_in_float64(name, batching, shared):
    model = build_model(name, SHAPE, 10, {"batching": batching})
    w, x, y = batch(model, shared=shared)
    with torch.no_grad():  # what the engines do; the paths must turn gradients on themselves
        loss, grad = model.loss_grad(w, x, y, gens(3))
    want_loss, want_grad = reference(name, model, w, x, y, gens(3))
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=1e-12)
    assert grad.shape == (3, model.dim) and grad.dtype == F64
    torch.testing.assert_close(model.grad(w, x, y, gens(3)), grad, rtol=0, atol=0)


def test_auto_picks_chain_for_mlps_and_loop_for_convolutions_on_cpu():
    cpu = torch.device("cpu")
    assert build_model("mlp", SHAPE, 10)._path(cpu) == "chain"
    assert build_model("cnn", SHAPE, 10)._path(cpu) == "loop"
    assert build_model("lenet5", SHAPE, 10)._path(torch.device("cuda")) == "vmap"


def test_chain_path_with_dropout_tanh_and_without_bias_matches_vmap():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7, bias=False), nn.ReLU(), nn.Dropout(0.3), nn.Dropout(0.0),
                        nn.Linear(7, 5), nn.Tanh(), nn.Identity(), nn.Linear(5, 3))
    chain, vmapped = TorchModel(net, 3, batching="chain"), TorchModel(net, 3, batching="vmap")
    assert chain.stochastic
    for shared in (False, True):
        w, x, y = batch(chain, m=4, b=6, shared=shared, shape=(3, 4))
        y = y % 3
        want = vmapped.loss_grad(w, x, y, gens(4))
        torch.testing.assert_close(chain.loss_grad(w, x, y, gens(4)), want, rtol=0, atol=1e-12)


def test_softmax_features_do_not_depend_on_the_image_layout():
    images = torch.rand(5, 1, 28, 28, dtype=F64)
    model = SoftmaxRegression(784, 10)
    assert torch.equal(model.featurize(images), model.featurize(images.reshape(5, 784)))


# --------------------------------------------------------------------------- dropout and evaluation


@pytest.mark.slow
def test_dropout_streams_are_per_worker_and_deterministic():
    model = build_model("cnn", SHAPE, 10)
    w, x, y = batch(model, m=3)
    before = torch.random.get_rng_state()
    first = model.grad(w, x, y, gens(3))
    assert torch.equal(first, model.grad(w, x, y, gens(3)))  # same seeds, same gradients
    assert not torch.equal(first[1], model.grad(w, x, y, gens(3, seed=50))[1])  # other seeds, other masks
    alone = model.grad(w[1:2], x[1:2], y[1:2], [torch.Generator().manual_seed(11)])  # worker 1 by itself
    torch.testing.assert_close(alone[0], first[1], rtol=0, atol=1e-12)
    assert torch.equal(before, torch.random.get_rng_state())  # torch's global stream is never read
    # float32 runs drop the same units as float64 runs
    g32 = model.grad(w.float(), x.float(), y, gens(3))
    torch.testing.assert_close(g32.double(), first, rtol=1e-3, atol=1e-4)


def test_stochastic_model_needs_one_generator_per_row():
    model = build_model("cnn", SHAPE, 10)
    w, x, y = batch(model, m=2)
    with pytest.raises(ValueError, match="one torch.Generator per worker"):
        model.grad(w, x, y)
    with pytest.raises(ValueError, match="got 1"):
        model.grad(w, x, y, gens(1))


def test_evaluation_runs_in_eval_mode():
    model = build_model("cnn", SHAPE, 10)
    w, x, y = batch(model, m=1, b=6)
    before = torch.random.get_rng_state()
    model.grad(w, x, y, gens(1))  # leaves the module in training mode
    with torch.no_grad():
        out = model.logits(w[0], x[0])
        torch.testing.assert_close(out, cnn_forward(split(w[0], model), x[0], None), rtol=0, atol=1e-12)
        assert torch.equal(out, model.logits(w[0], x[0]))  # dropout off: the same scores twice
    assert torch.equal(before, torch.random.get_rng_state())
    acc, loss = evaluate(model, w[0], x[0], y[0], chunk=4)
    assert (acc, loss) == pytest.approx(evaluate(model, w[0], x[0], y[0], chunk=100), abs=1e-12)
    assert model.eval_batch(SHAPE) < 8192  # activations of 8192 CNN inputs would take gigabytes


class _NoisyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x) + 0.1 * torch.randn_like(x[:, :3])  # randomness byzrsa cannot give a stream


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_other_randomness_in_forward_is_refused(batching):
    model = TorchModel(_NoisyNet(), 3, batching=batching)
    w = model.init(torch.Generator().manual_seed(0), F64).expand(2, -1)
    with pytest.raises(ConfigError, match="use nn.Dropout"):
        model.grad(w, torch.rand(2, 5, 4, dtype=F64), torch.zeros(2, 5, dtype=torch.long))


@pytest.mark.parametrize("norm", [
    lambda: nn.BatchNorm2d(4), lambda: nn.BatchNorm1d(4), lambda: nn.SyncBatchNorm(4),
    lambda: nn.InstanceNorm2d(4, track_running_stats=True), lambda: nn.LazyBatchNorm2d(),
])
def test_batchnorm_is_refused_naming_groupnorm_and_layernorm(norm):
    with pytest.raises(ConfigError, match="use GroupNorm or LayerNorm") as info:
        TorchModel(nn.Sequential(nn.Conv2d(1, 4, 3), norm(), nn.Flatten(), nn.LazyLinear(3)), 3)
    assert "\n" not in str(info.value) and "'1'" in str(info.value)


@pytest.mark.parametrize("norm", [lambda: nn.GroupNorm(2, 4), lambda: nn.BatchNorm2d(4, track_running_stats=False)])
def test_functional_normalisation_trains_on_every_path(norm):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), norm(), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    vmapped, looped = TorchModel(net, 3, batching="vmap"), TorchModel(net, 3, batching="loop")
    w, x, y = batch(vmapped, m=2, b=5, shape=(1, 8, 8))
    torch.testing.assert_close(looped.grad(w, x, y % 3), vmapped.grad(w, x, y % 3), rtol=0, atol=1e-12)


def test_alpha_dropout_is_refused():
    with pytest.raises(ConfigError, match="AlphaDropout"):
        TorchModel(nn.Sequential(nn.Linear(3, 3), nn.AlphaDropout(0.2)), 3)


# --------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("name", ["mlp", "cnn", "lenet5"])
@pytest.mark.slow
def test_init_is_deterministic_from_the_generator(name):
    before = torch.random.get_rng_state()
    a = build_model(name, SHAPE, 10)
    start = a.init(torch.Generator().manual_seed(7), torch.float32)
    assert torch.equal(start, build_model(name, SHAPE, 10).init(torch.Generator().manual_seed(7), torch.float32))
    assert not torch.equal(start, a.init(torch.Generator().manual_seed(8), torch.float32))
    assert torch.equal(a.init(torch.Generator().manual_seed(7), F64), start.double())  # dtype-independent start
    assert torch.equal(before, torch.random.get_rng_state())  # building and initialising leave torch's stream alone
    # training (the loop path points the module at the caller's rows) neither changes the start nor lets init
    # write into the caller's tensor
    w, x, y = batch(a, m=2)
    kept = w.clone()
    a.grad(w, x, y, gens(2))
    assert torch.equal(a.init(torch.Generator().manual_seed(7), torch.float32), start)
    assert torch.equal(w, kept)


# --------------------------------------------------------------------------- data shapes and real images


def test_gather_keeps_the_sample_shape():
    train_x = torch.arange(6 * 2 * 3 * 3, dtype=F64).view(6, 2, 3, 3)
    fake = SimpleNamespace(train_x=train_x, train_y=torch.arange(6), device=torch.device("cpu"))
    indices = torch.tensor([[0, 5, 5], [2, 1, 0]])
    x, y = Problem.gather(fake, indices)
    assert x.shape == (2, 3, 2, 3, 3) and torch.equal(x[1, 0], train_x[2]) and torch.equal(y, indices)
    flat = SimpleNamespace(train_x=torch.rand(6, 785), train_y=torch.arange(6), device=torch.device("cpu"))
    assert Problem.gather(flat, indices)[0].shape == (2, 3, 785)


def _train(model, ds, steps: int, lr: float, n_train: int = 3000, seed: int = 0) -> float:
    """A few SGD steps of 2 workers on a training subset; test accuracy on 1000 test images."""
    x, y = ds.train_x[:n_train].float(), ds.train_y[:n_train]
    w = model.init(torch.Generator().manual_seed(seed), torch.float32)
    pick, streams = torch.Generator().manual_seed(seed + 1), gens(2, seed + 2)
    for _ in range(steps):
        idx = torch.randint(0, n_train, (2, 32), generator=pick)
        w = w - lr * model.grad(w.expand(2, -1), x[idx], y[idx], streams).mean(0)
    return evaluate(model, w, ds.test_x[:1000].float(), ds.test_y[:1000])[0]


@pytest.mark.slow
def test_lenet5_learns_mnist_digits():
    ds = load_dataset("mnist-sample")
    assert ds.train_x.shape[1:] == SHAPE
    assert _train(build_model("lenet5", SHAPE, 10), ds, steps=100, lr=0.3) > 0.6  # 0.74 when written


@pytest.mark.skipif(not FASHION.is_file(), reason="Debian package dataset-fashion-mnist not installed "
                    "(apt-get install dataset-fashion-mnist)")
def test_cnn_learns_fashion_mnist_from_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("BYZRSA_CACHE", str(tmp_path))  # read the system folder, not a cache
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.sample_shape == SHAPE
    assert _train(build_model("cnn", SHAPE, 10), ds, steps=40, lr=0.2) > 0.5  # 0.6 when written; chance is 0.1


def test_dropout_uniforms_drawn_elsewhere_are_the_same_numbers(monkeypatch):
    """CPU streams feeding another device draw into a host buffer copied once per site: the same numbers."""
    torch_model = sys.modules["byzrsa.torch_model"]
    shapes = [(5, 3, 2), (5, 4)]
    direct = torch_model._uniforms(gens(5), shapes, torch.device("cpu"))
    monkeypatch.setattr(torch_model, "_lives_on", lambda g, device: False)
    assert all(torch.equal(a, b) for a, b in zip(torch_model._uniforms(gens(5), shapes, torch.device("cpu")), direct))
    streams = gens(5)
    monkeypatch.setattr(torch_model, "_lives_on", lambda g, device: g is not streams[1] and g is not streams[3])
    assert all(torch.equal(a, b) for a, b in zip(torch_model._uniforms(streams, shapes, torch.device("cpu")), direct))
