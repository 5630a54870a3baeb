"""Tests for alphaclip_core.alpha (CPU, fast)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as Fn
from PIL import Image

import alphaclip_core.alpha as A

FG, BG = 1.923077, -1.923077
MEAN = torch.tensor(A.OPENAI_DATASET_MEAN).view(3, 1, 1)
STD = torch.tensor(A.OPENAI_DATASET_STD).view(3, 1, 1)


def iou(a, b):
    return ((a & b).sum() / (a | b).sum()).item()


def bright_rect(h, w, box):
    """uint8 [3,H,W] black image with a white xyxy rectangle, and the rectangle's mask [1,H,W]."""
    x0, y0, x1, y1 = box
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[:, y0:y1, x0:x1] = 255
    return img, A.boxes_to_masks(box, h, w)


# ---------------------------------------------------------------- alpha values
def test_normalize_alpha_values():
    out = A.normalize_alpha(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(out, torch.tensor([BG, 0.0, FG]), atol=1e-5, rtol=0)
    assert A.ALPHA_MEAN == 0.5 and A.ALPHA_STD == 0.26


def test_normalize_alpha_rejects_out_of_range_and_non_float():
    with pytest.raises(ValueError, match="alpha values must lie in"):
        A.normalize_alpha(torch.tensor([1.01]))
    with pytest.raises(ValueError, match="alpha values must lie in"):
        A.normalize_alpha(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="alpha must be a floating"):
        A.normalize_alpha(torch.tensor([1]))
    # within the 1e-6 tolerance is accepted and clamped
    torch.testing.assert_close(A.normalize_alpha(torch.tensor([1 + 5e-7])), torch.tensor([FG]), atol=1e-5, rtol=0)


def test_whole_image_alpha():
    a = A.whole_image_alpha(2, 224)
    assert a.shape == (2, 1, 224, 224) and a.dtype == torch.float32
    torch.testing.assert_close(a, torch.full_like(a, FG), atol=1e-5, rtol=0)
    assert A.whole_image_alpha(1, (3, 5), dtype=torch.float64).shape == (1, 1, 3, 5)


# ---------------------------------------------------------------- RLE
SHAPES = [(1, 1), (7, 13), (31, 17), (5, 6), (101, 37)]


@pytest.mark.parametrize("h,w", SHAPES)
def test_rle_encode_matches_pycocotools(h, w):
    cm = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(h * 1000 + w)
    single = np.zeros((h, w), np.uint8)
    single[h // 2, w // 2] = 1
    cases = [np.zeros((h, w), np.uint8), np.ones((h, w), np.uint8), single]
    cases += [(rng.random((h, w)) < p).astype(np.uint8) for p in (0.05, 0.5, 0.95)]
    for m in cases:
        ref = cm.encode(np.asfortranarray(m))
        mine = A.rle_encode(m)
        assert mine["counts"] == ref["counts"].decode()
        assert mine["size"] == [h, w]
        np.testing.assert_array_equal(A.rle_decode(ref), m)  # decode pycocotools' bytes
        np.testing.assert_array_equal(A.rle_decode(mine), m)
    # bool numpy / torch inputs encode the same
    assert A.rle_encode(torch.from_numpy(cases[-2].astype(bool)))["counts"] == A.rle_encode(cases[-2])["counts"]


def test_rle_uncompressed_and_to_masks():
    # column-major: 3x2 mask, columns [0,1,1] and [1,0,0]
    m = A.rle_decode({"size": [3, 2], "counts": [1, 3, 2]})
    np.testing.assert_array_equal(m, [[0, 1], [1, 0], [1, 0]])
    assert m.dtype == np.uint8
    t = A.rle_to_masks([A.rle_encode(m), {"size": [3, 2], "counts": [0, 6]}], 3, 2)
    assert t.shape == (2, 3, 2) and t.dtype == torch.float32
    assert t[1].sum().item() == 6
    with pytest.raises(ValueError, match=r"mask 0 has size \(H, W\)=\(3, 2\).*\(4, 2\)"):
        A.rle_to_masks({"size": [3, 2], "counts": [6]}, 4, 2)


def test_rle_corrupt_inputs():
    with pytest.raises(ValueError, match="rle counts sum to 5 but size 3x2 needs 6"):
        A.rle_decode({"size": [3, 2], "counts": [1, 4]})
    with pytest.raises(ValueError, match="rle counts string has invalid character '~'"):
        A.rle_decode({"size": [3, 2], "counts": "6~"})
    with pytest.raises(ValueError, match="rle counts string is truncated"):
        A.rle_decode({"size": [3, 2], "counts": "P"})  # 'P' = 32 + 48: continuation bit set
    with pytest.raises(ValueError, match="rle must be a dict with keys 'size' and 'counts'"):
        A.rle_decode({"counts": "6"})
    with pytest.raises(ValueError, match="rle 'size' must be"):
        A.rle_decode({"size": [3], "counts": "6"})
    with pytest.raises(ValueError, match="negative run"):
        A.rle_decode({"size": [3, 2], "counts": [-1, 7]})


# ---------------------------------------------------------------- boxes / polygons
def test_box_hand_checked():
    m = A.boxes_to_masks((1, 1, 3, 4), 5, 6)  # H=5, W=6
    expected = torch.zeros(1, 5, 6)
    expected[0, 1:4, 1:3] = 1  # rows y=1,2,3 (centres 1.5..3.5), cols x=1,2 (centres 1.5, 2.5)
    torch.testing.assert_close(m, expected, atol=0, rtol=0)
    # fractional, partly outside (clipped), several boxes, numpy/tensor input
    m2 = A.boxes_to_masks(np.array([[-3.0, -2.0, 1.6, 0.6], [4.4, 3.4, 10, 10]]), 5, 6)
    assert m2.shape == (2, 5, 6)
    assert m2[0].nonzero().tolist() == [[0, 0], [0, 1]]
    assert m2[1].nonzero().tolist() == [[3, 4], [3, 5], [4, 4], [4, 5]]  # centres x 4.5, 5.5 and y 3.5, 4.5
    torch.testing.assert_close(A.boxes_to_masks(torch.tensor([1, 1, 3, 4]), 5, 6), expected, atol=0, rtol=0)


def test_box_errors():
    with pytest.raises(ValueError, match=r"box 1 .*degenerate"):
        A.boxes_to_masks([[0, 0, 2, 2], [3, 1, 3, 4]], 5, 6)
    with pytest.raises(ValueError, match=r"box 0 .*entirely outside"):
        A.boxes_to_masks([6, 0, 9, 3], 5, 6)
    with pytest.raises(ValueError, match=r"box must have shape \[4\] or \[K, 4\]"):
        A.boxes_to_masks([1, 2, 3], 5, 6)


def test_polygons_hand_checked():
    # PIL ImageDraw.polygon includes the outline: rectangle (1,1)-(4,3) fills x=1..4, y=1..3
    expected = torch.zeros(5, 6)
    expected[1:4, 1:5] = 1
    for polys in ([1, 1, 4, 1, 4, 3, 1, 3], [[1, 1, 4, 1, 4, 3, 1, 3]], [[[1, 1, 4, 1, 4, 3, 1, 3]]]):
        m = A.polygons_to_masks(polys, 5, 6)
        assert m.shape == (1, 5, 6)
        torch.testing.assert_close(m[0], expected, atol=0, rtol=0)
    # two regions; the second has two parts (union)
    m = A.polygons_to_masks([[[1, 1, 4, 1, 4, 3, 1, 3]], [[0, 0, 1, 0, 0, 1], [5, 4, 5, 3, 4, 4]]], 5, 6)
    assert m.shape == (2, 5, 6)
    assert sorted(map(tuple, m[1].nonzero().tolist())) == [(0, 0), (0, 1), (1, 0), (3, 5), (4, 4), (4, 5)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2 copy keyword
def test_polygon_close_to_pycocotools():
    cm = pytest.importorskip("pycocotools.mask")
    poly = [[10.3, 12.7, 80.2, 20.1, 60.5, 90.9, 15.2, 70.4]]
    ours = A.polygons_to_masks([poly], 100, 100)[0].numpy() > 0
    ref = cm.decode(cm.merge(cm.frPyObjects(poly, 100, 100))) > 0
    assert iou(torch.from_numpy(ours), torch.from_numpy(ref)) > 0.95  # measured 0.981 (rasteriser conventions differ)


def test_polygon_errors():
    with pytest.raises(ValueError, match=r"polygon 0 part 1 needs >= 3"):
        A.polygons_to_masks([[[0, 0, 2, 0, 2, 2], [0, 0, 1, 1]]], 5, 6)
    with pytest.raises(ValueError, match=r"polygon 0 part 0 needs >= 3.*got 7 numbers"):
        A.polygons_to_masks([0, 0, 2, 0, 2, 2, 1], 5, 6)


# ---------------------------------------------------------------- to_masks / region_masks
def test_to_masks_dtypes_and_containers():
    base = np.zeros((4, 5), bool)
    base[1:3, 2:4] = True
    want = torch.from_numpy(base.astype(np.float32))[None]
    inputs = [
        base, base.astype(np.uint8), base.astype(np.uint8) * 255, base.astype(np.float64), base.astype(np.int64),
        torch.from_numpy(base), torch.from_numpy(base.astype(np.uint8) * 255), torch.from_numpy(base).half(),
        Image.fromarray(base), Image.fromarray(base.astype(np.uint8) * 255),
        Image.fromarray(base.astype(np.uint8)).convert("P"), Image.fromarray(base.astype(np.int32)),
        base.tolist(),
    ]
    for x in inputs:
        out = A.to_masks(x, 4, 5)
        assert out.dtype == torch.float32 and out.shape == (1, 4, 5), type(x)
        torch.testing.assert_close(out, want, atol=0, rtol=0)
    # soft uint8 0..255 is scaled; KxHxW and lists concatenate
    torch.testing.assert_close(A.to_masks(np.full((2, 2), 51, np.uint8)), torch.full((1, 2, 2), 0.2), atol=1e-7, rtol=0)
    assert A.to_masks(np.stack([base, ~base])).shape == (2, 4, 5)
    stacked = A.to_masks([base, torch.from_numpy(np.stack([base, base]))], 4, 5)
    assert stacked.shape == (3, 4, 5)


def test_to_masks_errors():
    with pytest.raises(ValueError, match=r"mask 1 has size \(H, W\)=\(4, 6\) but the expected size is \(4, 5\)"):
        A.to_masks([np.zeros((4, 5)), np.zeros((4, 6))], 4, 5)
    with pytest.raises(ValueError, match=r"mask 0 has size \(H, W\)=\(4, 5\) but the expected size is \(8, 10\)"):
        A.to_masks(np.zeros((4, 5)), 8, 10)
    with pytest.raises(TypeError, match=r"mask has dtype int64 with values other than 0/1; accepted dtypes: bool"):
        A.to_masks(np.full((4, 5), 3, np.int64))
    with pytest.raises(TypeError, match="mask has unsupported dtype complex"):
        A.to_masks(np.zeros((4, 5), np.complex64))
    with pytest.raises(TypeError, match="mask has unsupported dtype <U1"):
        A.to_masks(np.array([["a"]]))
    with pytest.raises(ValueError, match=r"mask: float masks must lie in \[0, 1\]"):
        A.to_masks(np.full((4, 5), 1.5))
    with pytest.raises(ValueError, match=r"mask must have shape \[H, W\] or \[K, H, W\]"):
        A.to_masks(np.zeros((1, 1, 4, 5)))
    with pytest.raises(ValueError, match="PIL mask must be single-channel"):
        A.to_masks(Image.new("RGB", (5, 4)))


def test_region_masks_order_whole_and_empty():
    h, w = 5, 6
    m = np.zeros((h, w), np.uint8)
    m[0, 0] = 1
    out = A.region_masks(h, w, mask=m, box=[(1, 1, 3, 4)], polygon=[1, 1, 4, 1, 4, 3, 1, 3], rle=A.rle_encode(m))
    assert out.shape == (4, h, w)
    assert out.sum(dim=(1, 2)).tolist() == [1, 6, 12, 1]
    torch.testing.assert_close(A.region_masks(h, w), torch.ones(1, h, w), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"mask 1 is empty \(all zeros\); omit it"):
        A.region_masks(h, w, mask=[m, np.zeros_like(m)])
    with pytest.raises(ValueError, match=r"box 0 is empty \(all zeros\)"):
        A.region_masks(h, w, box=(0.1, 0.1, 0.4, 0.4))  # covers no pixel centre
    with pytest.raises(ValueError, match=r"polygon 0 is empty"):
        A.region_masks(h, w, polygon=[20, 20, 30, 20, 30, 30])


# ---------------------------------------------------------------- PairedTransform
def _smooth_image(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([127 + 120 * np.sin(xx / 9 + c) * np.cos(yy / 13) for c in range(3)], -1).astype(np.uint8)


@pytest.mark.parametrize("w,h", [(300, 200), (200, 300), (640, 480)])
def test_crop_matches_open_clip_preprocess(w, h):
    from open_clip.transform import image_transform

    ref = image_transform(224, is_train=False)
    T = A.PairedTransform(224, "crop")
    # smooth (photo-like) image: measured mean |diff| 0.0041-0.0045, max 0.016 (uint8 rounding inside PIL)
    im = Image.fromarray(_smooth_image(h, w))
    pix, alpha = T(im)
    assert pix.shape == (1, 3, 224, 224) and pix.dtype == torch.float32
    d = (pix - ref(im)[None]).abs()
    assert d.mean() < 0.01 and d.max() < 0.05
    torch.testing.assert_close(alpha, torch.full((1, 1, 224, 224), FG), atol=1e-5, rtol=0)
    # uniform noise, worst case: PIL clips/rounds to uint8 between its two resize passes;
    # measured mean 0.0041-0.0053, max 0.08-0.30
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    d = (T(im)[0] - ref(im)[None]).abs()
    assert d.mean() < 0.01 and d.max() < 0.5


def test_input_types_agree_exactly():
    arr = np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    u8 = torch.from_numpy(arr).permute(2, 0, 1)
    T = A.PairedTransform(32, "crop")
    base = T(u8)
    for other in (u8.float() / 255, u8[None], Image.fromarray(arr), arr):
        out = T(other)
        assert torch.equal(out[0], base[0]) and torch.equal(out[1], base[1])


@pytest.mark.parametrize("h,w,box", [(200, 300, (60, 30, 120, 90)), (300, 200, (30, 60, 90, 120)),
                                     (200, 300, (190, 120, 245, 170))])
def test_alignment_vs_reference(h, w, box):
    img, m = bright_rect(h, w, box)
    for mode in ("crop", "pad", "squash"):
        pix, alpha = A.PairedTransform(224, mode)(img, m)
        bright = (pix[0] * STD + MEAN).mean(0) > 0.5  # back to [0, 1]; mean-colour padding is ~0.45
        assert iou(bright, alpha[0, 0] > 0) > 0.9, mode  # measured 1.000
    # the reference: image centre-cropped, mask squashed -> misaligned (measured IoU 0.418)
    pix, _ = A.PairedTransform(224, "crop")(img, m)
    bright = (pix[0] * STD + MEAN).mean(0) > 0.5
    squashed = Fn.interpolate(m[None], size=(224, 224), mode="bilinear", antialias=True)[0, 0] > 0.5
    assert iou(bright, squashed) < 0.6


def test_pad_mode_padding():
    img = torch.rand(3, 200, 300, generator=torch.Generator().manual_seed(0))
    pix, alpha = A.PairedTransform(224, "pad")(img)
    # 300x300 canvas, 50 pad rows top and bottom -> 37.3 output rows; stay 2 rows clear of the seam
    for rows in (slice(0, 35), slice(-35, None)):
        assert pix[0, :, rows].abs().max() < 1e-5
        torch.testing.assert_close(alpha[0, 0, rows], torch.full_like(alpha[0, 0, rows], BG), atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha[0, 0, 40:184], torch.full_like(alpha[0, 0, 40:184], FG), atol=1e-5, rtol=0)
    _, a2 = A.prepare(img, mode="pad")
    torch.testing.assert_close(a2, alpha, atol=0, rtol=0)


def test_mask_outside_crop_raises_and_pad_keeps_it():
    # 300x200 (WxH): resized to 336x224, crop keeps resized x in [56, 280) = source pixel centres 50..249
    img = torch.zeros(3, 200, 300, dtype=torch.uint8)
    T = A.PairedTransform(224, "crop")
    with pytest.raises(ValueError, match=r"mask 1 lies entirely outside the centre crop.*mode='pad'"):
        T(img, A.boxes_to_masks([[100, 50, 150, 100], [0, 0, 50, 200]], 200, 300))
    _, a = T(img, A.boxes_to_masks([0, 0, 51, 200], 200, 300))  # pixel column 50 is kept
    assert (a > 0).any()
    _, a = A.PairedTransform(224, "pad")(img, A.boxes_to_masks([0, 0, 50, 200], 200, 300))
    assert (a > 0).any()


def test_transform_errors():
    T = A.PairedTransform(32)
    img = torch.zeros(3, 20, 30)
    with pytest.raises(ValueError, match=r"masks 0 is empty \(all zeros\); pass masks=None"):
        T(img, torch.zeros(1, 20, 30))
    with pytest.raises(ValueError, match=r"mask 0 has size \(H, W\)=\(20, 20\) but the expected size is \(20, 30\)"):
        T(img, torch.ones(1, 20, 20))
    with pytest.raises(ValueError, match=r"image: a tensor image must be \[3, H, W\] or \[B, 3, H, W\]"):
        T(torch.zeros(20, 30, 3))
    with pytest.raises(ValueError, match=r"image: float images must lie in \[0, 1\]"):
        T(torch.full((3, 20, 30), 255.0))
    with pytest.raises(TypeError, match="image must be uint8 .* got dtype torch.int64"):
        T(torch.zeros(3, 20, 30, dtype=torch.long))
    with pytest.raises(ValueError, match="image: a numpy image must be HxWx3"):
        T(np.zeros((3, 20, 30), np.uint8))
    with pytest.raises(ValueError, match="mode must be"):
        A.PairedTransform(224, "stretch")
    with pytest.raises(ValueError, match="size must be a positive int"):
        A.PairedTransform(0)
    with pytest.raises(ValueError, match="interpolation must be"):
        A.PairedTransform(224, interpolation="lanczos3")


def test_batched_images():
    imgs = torch.rand(3, 3, 40, 60, generator=torch.Generator().manual_seed(2))
    masks = A.boxes_to_masks([[20, 0, 40, 20], [15, 10, 45, 40], [0, 0, 60, 40]], 40, 60)
    T = A.PairedTransform(32, "crop")
    pix, alpha = T(imgs, masks)
    assert pix.shape == (3, 3, 32, 32) and alpha.shape == (3, 1, 32, 32)
    for i in range(3):  # batched == one at a time
        p1, a1 = T(imgs[i], masks[i])
        torch.testing.assert_close(pix[i:i + 1], p1, atol=1e-6, rtol=0)
        torch.testing.assert_close(alpha[i:i + 1], a1, atol=1e-6, rtol=0)
    assert T(imgs)[1].shape == (3, 1, 32, 32)  # None -> one whole-image alpha per image
    with pytest.raises(ValueError, match=r"masks: got K=2 masks for B=3 images"):
        T(imgs, masks[:2])
    # one image, K masks -> K alphas
    assert T(imgs[0], masks)[1].shape == (3, 1, 32, 32)


def test_prepare_one_call():
    arr = _smooth_image(200, 300)
    pix, alpha = A.prepare(Image.fromarray(arr), box=(60, 30, 120, 90), polygon=[[10, 10, 100, 10, 100, 100]])
    assert pix.shape == (1, 3, 224, 224) and alpha.shape == (2, 1, 224, 224)
    assert alpha.dtype == torch.float32 and alpha.min() >= BG - 1e-5 and alpha.max() <= FG + 1e-5
    pix0, alpha0 = A.prepare(arr)
    torch.testing.assert_close(pix0, pix, atol=0, rtol=0)
    torch.testing.assert_close(alpha0, torch.full((1, 1, 224, 224), FG), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="prepare takes one image"):
        A.prepare(torch.zeros(2, 3, 20, 20))
    with pytest.raises(ValueError, match=r"box 0 .*entirely outside"):
        A.prepare(arr, box=(400, 0, 500, 10))
