"""ConAug: hand-made targets, a per-sample loop reference, parameter drawing and the fastai callback."""

from pathlib import Path

import cv2
import pytest
import torch
from fastai.basic_train import loss_batch
from fastai.callback import CallbackHandler

import callbacks.conaug as conaug_module
from callbacks.conaug import ConAugPretransform, conaug, conaug_views, draw_conaug_params, make_conaug_grid
from tools.benchmark.loop_references import conaug_loop
from utils import CharsetMapper

REPO = Path(__file__).resolve().parents[2]
T, C = 6, 5  # max_length 5, classes: 0 null + 4 characters


def onehot(words):
    """N x T x C one-hot targets and lengths of words given as lists of class indices."""
    y = torch.zeros(len(words), T, C)
    for i, w in enumerate(words):
        seq = list(w) + [0] * (T - len(w))
        y[i, torch.arange(T), torch.tensor(seq)] = 1.0
    return y, torch.tensor([len(w) + 1 for w in words])


def indices(y):
    return y.argmax(-1).tolist()


WORDS = [[1, 2], [3], [4, 1, 2]]  # "ab", "c", "dab"


def images_of(n, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g)


def test_hand_made_original_then_partner():
    y, l = onehot(WORDS)
    perm = torch.tensor([1, 2, 0])
    left = torch.tensor([False, False, False])
    _, y1, l1, v1 = conaug(images_of(3), y, l, perm, left)
    assert indices(y1) == [[1, 2, 3, 0, 0, 0],   # ab + c
                           [3, 4, 1, 2, 0, 0],   # c + dab
                           [4, 1, 2, 1, 2, 0]]   # dab + ab: 5 chars = max_length, still valid
    assert l1.tolist() == [4, 5, 6]
    assert v1.tolist() == [True, True, True]


def test_hand_made_partner_then_original():
    y, l = onehot(WORDS)
    perm = torch.tensor([2, 0, 1])
    left = torch.tensor([True, True, True])
    _, y2, l2, v2 = conaug(images_of(3), y, l, perm, left)
    assert indices(y2) == [[4, 1, 2, 1, 2, 0],   # dab + ab
                           [1, 2, 3, 0, 0, 0],   # ab + c
                           [3, 4, 1, 2, 0, 0]]   # c + dab
    assert l2.tolist() == [6, 4, 5]
    assert v2.tolist() == [True, True, True]


def test_hand_made_mixed_sides_and_self_pair():
    y, l = onehot(WORDS)
    perm = torch.tensor([0, 2, 1])
    left = torch.tensor([False, True, False])
    _, y1, l1, v1 = conaug(images_of(3), y, l, perm, left)
    assert indices(y1) == [[1, 2, 1, 2, 0, 0],   # ab + ab (paired with itself)
                           [4, 1, 2, 3, 0, 0],   # partner dab on the left of c
                           [4, 1, 2, 3, 0, 0]]   # dab + partner c on the right
    assert l1.tolist() == [5, 5, 5]


def test_overlong_pairs_are_invalid_and_clamped():
    words = [[1, 2, 3, 4], [4, 3], [1]]
    y, l = onehot(words)
    perm = torch.tensor([1, 0, 2])
    left = torch.tensor([False, False, True])
    _, y1, l1, v1 = conaug(images_of(3), y, l, perm, left)
    assert v1.tolist() == [False, False, True]  # 6 chars > max_length 5 for the first two
    assert l1.tolist() == [T, T, 3]
    # truncated targets: the first T characters of the pair, no end slot
    assert indices(y1) == [[1, 2, 3, 4, 4, 3], [4, 3, 1, 2, 3, 4], [1, 1, 0, 0, 0, 0]]


def test_image_is_side_by_side_at_half_width():
    x = images_of(3)
    y, l = onehot(WORDS)
    perm = torch.tensor([2, 0, 1])
    left = torch.tensor([False, True, False])
    x1, *_ = conaug(x, y, l, perm, left)
    # Halving the width with bilinear, align_corners=False, averages each pair of neighbouring columns.
    for i, (a, b) in enumerate([(0, 2), (0, 1), (2, 1)]):
        pair = torch.cat([x[a], x[b]], dim=2)
        expected = 0.5 * (pair[..., 0::2] + pair[..., 1::2])
        torch.testing.assert_close(x1[i], expected)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('side', ['fixed', 'batch', 'sample'])
def test_matches_loop_reference_on_random_inputs(seed, side):
    g = torch.Generator().manual_seed(seed)
    n, t_slots, c = 7, 8, 6
    x = torch.randn(n, 3, 5, 9, generator=g)
    lengths = torch.randint(2, t_slots + 1, (n,), generator=g)
    y = torch.rand(n, t_slots, c, generator=g)  # soft, smoothed-like targets: every slot differs
    perm1, left1, perm2, left2 = draw_conaug_params(n, side, generator=g)
    for perm, left in ((perm1, left1), (perm2, left2)):
        x_ref, y_ref, l_ref, v_ref = conaug_loop(x, y, lengths, perm, left)
        x_out, y_out, l_out, v_out = conaug(x, y, lengths, perm, left)
        torch.testing.assert_close(x_out, x_ref)
        torch.testing.assert_close(y_out, y_ref, rtol=0, atol=0)
        assert l_out.tolist() == l_ref.tolist() and l_out.dtype == lengths.dtype
        assert v_out.tolist() == v_ref.tolist()
        assert all(t.is_contiguous() for t in (x_out, y_out, l_out, v_out))


def test_inputs_are_not_modified():
    x = images_of(3)
    y, l = onehot(WORDS)
    perm, left = torch.tensor([1, 2, 0]), torch.tensor([True, False, True])
    clones = [t.clone() for t in (x, y, l, perm, left)]
    outs = conaug(x, y, l, perm, left)
    for t in outs:
        t.add_(1) if t.dtype != torch.bool else t.logical_not_()
    for original, clone in zip((x, y, l, perm, left), clones):
        assert torch.equal(original, clone)


def is_permutation(p, n):
    return sorted(p.tolist()) == list(range(n))


@pytest.mark.parametrize('width', [6, 7])
def test_views_equal_two_single_views(width):
    """Both views from one 2N pairing equal two separate `conaug` calls, for even and odd widths."""
    g = torch.Generator().manual_seed(width)
    words = [[1 + int(k) for k in torch.randint(0, 4, (int(n),), generator=g)]
             for n in torch.randint(1, T, (9,), generator=g)]
    y, l = onehot(words)
    x = images_of(9, w=width, seed=width)
    perm1, left1, perm2, left2 = draw_conaug_params(9, 'sample', generator=g)
    view1, view2 = conaug_views(x, y, l, perm1, left1, perm2, left2)
    for view, (perm, left) in ((view1, (perm1, left1)), (view2, (perm2, left2))):
        for got, want in zip(view, conaug(x, y, l, perm, left)):
            assert got.is_contiguous()
            assert torch.equal(got, want)


def test_draw_params_fixed():
    perm1, left1, perm2, left2 = draw_conaug_params(9, 'fixed', generator=torch.Generator().manual_seed(0))
    assert is_permutation(perm1, 9) and is_permutation(perm2, 9)
    assert not left1.any() and left2.all()
    assert left1.shape == left2.shape == (9,) and left1.dtype == torch.bool


def test_draw_params_batch_one_coin_per_view():
    g = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(40):
        perm1, left1, perm2, left2 = draw_conaug_params(6, 'batch', generator=g)
        assert is_permutation(perm1, 6) and is_permutation(perm2, 6)
        assert left1.shape == (6,) and left1.dtype == torch.bool
        assert len(set(left1.tolist())) == 1 and len(set(left2.tolist())) == 1
        seen.add((bool(left1[0]), bool(left2[0])))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}  # independent per view


def test_draw_params_sample_one_coin_per_sample():
    g = torch.Generator().manual_seed(2)
    perm1, left1, perm2, left2 = draw_conaug_params(64, 'sample', generator=g)
    assert is_permutation(perm1, 64) and is_permutation(perm2, 64)
    assert 0 < int(left1.sum()) < 64 and 0 < int(left2.sum()) < 64
    assert not torch.equal(left1, left2)


def test_draw_params_two_permutations_differ_and_follow_device():
    perm1, _, perm2, _ = draw_conaug_params(32, 'fixed', generator=torch.Generator().manual_seed(3), device='cpu')
    assert not torch.equal(perm1, perm2)
    assert perm1.device.type == 'cpu' and perm1.dtype == torch.long


@pytest.mark.parametrize('side', ['fixed', 'batch', 'sample'])
def test_draw_params_are_drawn_on_the_batch_device_without_a_copy(monkeypatch, side):
    """Without a generator every draw happens on the requested device ('meta' here: no CPU draw, no copy)."""
    devices = []
    for name in ('randperm', 'randint'):
        original = getattr(torch, name)

        def recording(*args, _original=original, **kwargs):
            devices.append(torch.device(kwargs['device']))
            return _original(*args, **kwargs)
        monkeypatch.setattr(torch, name, recording)
    original_to = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        moved = original_to(self, *args, **kwargs)
        devices.append(moved.device)
        return moved
    monkeypatch.setattr(torch.Tensor, 'to', recording_to)
    params = draw_conaug_params(6, side, device='meta')
    assert devices and set(devices) == {torch.device('meta')}  # drawn there, and never moved from elsewhere
    assert all(p.device.type == 'meta' and p.shape == (6,) for p in params)


def test_draw_params_on_the_cpu_are_those_of_the_cpu_generator():
    """CPU batches draw exactly what they drew when parameters were always drawn on the CPU and then moved."""
    torch.manual_seed(11)
    drawn = draw_conaug_params(9, 'sample', device='cpu')
    torch.manual_seed(11)
    reference = draw_conaug_params(9, 'sample', generator=torch.default_generator)
    assert all(torch.equal(a, b) for a, b in zip(drawn, reference))


def test_draw_params_unknown_side():
    with pytest.raises(ValueError, match=r"'left'.*fixed.*batch.*sample"):
        draw_conaug_params(4, 'left')


def test_callback_leaves_evaluation_batches_alone():
    cb = ConAugPretransform()
    x, (y, l) = images_of(3), onehot(WORDS)
    before = [t.clone() for t in (x, y, l)]
    assert cb.on_batch_begin(last_input=x, last_target=(y, l), train=False) is None  # fastai keeps the batch
    assert all(torch.equal(t, c) for t, c in zip((x, y, l), before))
    assert cb.invalid_rate == 0.0


def half_width(a, b):
    """Images a and b side by side, halved in width: bilinear, align_corners=False averages column pairs."""
    pair = torch.cat([a, b], dim=2)
    return 0.5 * (pair[..., 0::2] + pair[..., 1::2])


def test_callback_rewrites_the_batch_as_built_by_hand(monkeypatch):
    """With the pairing fixed, the callback's batch is exactly the hand-built one: the original, then view 1
    (original + partner) and view 2 (partner + original), targets concatenated, lengths summed, overlong invalid."""
    words = [[1, 2, 3, 4], [4, 3], [1]]  # "abcd", "dc", "a"
    params = (torch.tensor([1, 2, 0]), torch.tensor([False, False, False]),
              torch.tensor([2, 0, 1]), torch.tensor([True, True, True]))
    monkeypatch.setattr(conaug_module, 'draw_conaug_params', lambda n, side, device=None: params)
    x, (y, l) = images_of(3), onehot(words)
    before = [t.clone() for t in (x, y, l)]
    cb = ConAugPretransform(side='sample')
    out = cb.on_batch_begin(last_input=x, last_target=[y, l], train=True)
    x0, x1, x2 = out['last_input']
    yy, ll, y1, l1, v1, y2, l2, v2 = out['last_target']
    assert x0 is x and yy is y and ll is l
    assert all(torch.equal(t, c) for t, c in zip((x, y, l), before))  # the original batch is not written to
    for i, j in enumerate([1, 2, 0]):  # view 1: sample i on the left of its partner j
        torch.testing.assert_close(x1[i], half_width(x[i], x[j]))
    for i, j in enumerate([2, 0, 1]):  # view 2: partner j on the left of sample i
        torch.testing.assert_close(x2[i], half_width(x[j], x[i]))
    assert indices(y1) == [[1, 2, 3, 4, 4, 3],   # abcd + dc: 6 chars, cut to the 6 slots, no end
                           [4, 3, 1, 0, 0, 0],   # dc + a
                           [1, 1, 2, 3, 4, 0]]   # a + abcd
    assert l1.tolist() == [6, 4, 6] and v1.tolist() == [False, True, True]
    assert indices(y2) == [[1, 1, 2, 3, 4, 0],   # a + abcd
                           [1, 2, 3, 4, 4, 3],   # abcd + dc: overlong
                           [4, 3, 1, 0, 0, 0]]   # dc + a
    assert l2.tolist() == [6, 6, 4] and v2.tolist() == [True, False, True]
    assert cb.invalid_rate == pytest.approx(2 / 6)


@pytest.mark.parametrize('side', ['fixed', 'batch', 'sample'])
def test_callback_views_match_the_loop_reference(side):
    """The callback's two views equal the per-sample loop (tools/benchmark/loop_references.py) on its own draws."""
    g = torch.Generator().manual_seed(7)
    words = [[1 + int(k) for k in torch.randint(0, 4, (int(n),), generator=g)]
             for n in torch.randint(1, T, (8,), generator=g)]
    x, (y, l) = images_of(8, w=10, seed=7), onehot(words)
    cb = ConAugPretransform(side=side)
    torch.manual_seed(5)
    out = cb.on_batch_begin(last_input=x, last_target=[y, l], train=True)
    torch.manual_seed(5)
    perm1, left1, perm2, left2 = draw_conaug_params(8, side)
    x0, x1, x2 = out['last_input']
    yy, ll, y1, l1, v1, y2, l2, v2 = out['last_target']
    assert x0 is x and yy is y and ll is l
    for got, (perm, left) in (((x1, y1, l1, v1), (perm1, left1)), ((x2, y2, l2, v2), (perm2, left2))):
        x_ref, y_ref, l_ref, v_ref = conaug_loop(x, y, l, perm, left)
        torch.testing.assert_close(got[0], x_ref)
        assert torch.equal(got[1], y_ref) and got[2].tolist() == l_ref.tolist() and got[3].tolist() == v_ref.tolist()
    assert cb.invalid_rate == pytest.approx(int((~v1).sum() + (~v2).sum()) / 16)


def test_callback_through_fastai_handler():
    """fastai's CallbackHandler feeds the dict back: model(x, x1, x2) and loss(out, y, l, y1, l1, v1, y2, l2, v2),
    the rewritten batch itself (the loop reference's views); evaluation batches reach them unchanged."""
    seen = {}

    class Model(torch.nn.Module):
        def forward(self, *xs):
            seen['inputs'] = xs
            return xs[0].sum()

    def loss_func(out, *targets):
        seen['targets'] = targets
        return out

    handler = CallbackHandler([ConAugPretransform(side='sample')])
    handler.state_dict.update(dict(epoch=0, iteration=0, num_batch=0))
    x, (y, l) = images_of(3), onehot(WORDS)
    torch.manual_seed(3)
    xb, yb = handler.on_batch_begin(x, [y, l], train=True)
    loss_batch(Model(), xb, yb, loss_func, cb_handler=handler)
    torch.manual_seed(3)
    perm1, left1, perm2, left2 = draw_conaug_params(3, 'sample')
    ref1, ref2 = conaug_loop(x, y, l, perm1, left1), conaug_loop(x, y, l, perm2, left2)
    x0, x1, x2 = seen['inputs']
    assert x0 is x
    torch.testing.assert_close(x1, ref1[0])
    torch.testing.assert_close(x2, ref2[0])
    targets = seen['targets']
    assert len(targets) == 8 and targets[0] is y and targets[1] is l
    for got, want in zip(targets[2:5], ref1[1:]):
        assert torch.equal(got, want)
    for got, want in zip(targets[5:], ref2[1:]):
        assert torch.equal(got, want)
    assert targets[4].dtype == targets[7].dtype == torch.bool

    xb, yb = handler.on_batch_begin(x, [y, l], train=False)
    loss_batch(Model(), xb, yb, loss_func, cb_handler=handler)
    assert len(seen['inputs']) == 1 and seen['inputs'][0] is x
    assert len(seen['targets']) == 2 and seen['targets'][0] is y and seen['targets'][1] is l


def test_grid_png_written(tmp_path):
    charset = CharsetMapper(REPO / 'data' / 'charset_36.txt', max_length=5)
    texts = ['ab', 'cde', 'x9']
    pairs = [charset.onehot(t) for t in texts]
    y = torch.stack([p[0] for p in pairs])
    l = torch.tensor([p[1] for p in pairs])
    calls = []

    class Writer:
        def add_image(self, tag, img, step, dataformats):
            calls.append((tag, img.shape, step, dataformats))

    cb = ConAugPretransform(charset=charset, test_conaug=True, workdir=tmp_path, writer=Writer(), grid_batches=1)
    x = images_of(3, h=8, w=32)
    cb.on_batch_begin(last_input=x, last_target=(y, l), train=True)
    cb.on_batch_begin(last_input=x, last_target=(y, l), train=True)
    png = cv2.imread(str(tmp_path / 'conaug_grid_0.png'))
    assert png is not None and png.ndim == 3 and png.shape[2] == 3
    assert not (tmp_path / 'conaug_grid_1.png').exists()
    assert len(calls) == 1 and calls[0][0] == 'conaug/grid' and calls[0][2] == 0 and calls[0][3] == 'HWC'
    assert calls[0][1] == png.shape


def test_make_grid_shape_and_denormalisation():
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    white = ((torch.ones(2, 3, 16, 40) - mean) / std)
    black = ((torch.zeros(2, 3, 16, 40) - mean) / std)
    grid = make_conaug_grid(black, white, black, ['a', 'b'], ['c', 'd'], ['e', 'f'], max_rows=1)
    assert grid.dtype.name == 'uint8' and grid.ndim == 3 and grid.shape[2] == 3
    black_pixels = int((grid.max(axis=2) == 0).sum())
    assert black_pixels >= 2 * 16 * 40  # the two denormalised black images come out pure black
    assert int((grid.min(axis=2) == 255).sum()) >= 16 * 40  # and the white one pure white
    # one row only: the picture is shorter than two rows of 16-pixel images
    assert grid.shape[0] < 2 * 16 * max(1, 64 // 16)
