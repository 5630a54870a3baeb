"""A synthetic region world, and the two-stage training of the shipped toy Alpha-CLIP.

Scenes: ``size x size`` pictures with 1-4 non-overlapping objects (shape x colour x size at a
random position) on a textured, low-saturation background (stripes, checks, noise, gradient,
dots). Every object has its exact mask and a phrase ("a red circle", "a small blue cross"); the
scene caption lists them all. Scenes are written in the shard format of
:mod:`alphaclip_train.schema` (object attributes go to ``record["meta"]["objects"]``).

The shipped model (:func:`load_tiny`, used by ``alphaclip demo``) was made by :func:`make_tiny`,
with this module's ``python -m alphaclip_train.synthetic`` entry point:

1. stage ``clip``: a tiny CLIP trained from scratch on whole-scene captions;
2. stage ``alpha``: Alpha-CLIP fine-tuning of (1) on region-phrase pairs with the recipe's loss.

Both stages use :func:`alphaclip_train.loop.train`. The model is a toy: it knows 4 shapes x 6
colours on 64-pixel pictures, nothing about the real world.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from alphaclip_core.alpha import rle_encode

from .schema import ShardWriter

__all__ = ["SHAPES", "COLOURS", "SIZES", "LABELS", "Scene", "render_scene", "scene_record", "write_shards",
           "label_of", "TINY_CFG", "MICRO_CFG", "init_model_dir", "ASSETS", "load_tiny", "demo_scene", "make_tiny"]

logger = logging.getLogger(__name__)

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 225),
    "yellow": (240, 215, 25), "purple": (150, 40, 200), "white": (245, 245, 245),
}
SIZES: Dict[str, Tuple[float, float]] = {"small": (0.17, 0.23), "large": (0.30, 0.38)}  # side / scene side
#: the region classes of the world: "colour shape"
LABELS: Tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
BACKGROUNDS = ("stripes", "checks", "noise", "gradient", "dots")

#: open_clip config of the shipped toy model (like alpha-ViT-Tiny-8, with 16px patches and a 32-token context,
#: small enough to train on two CPU cores in minutes)
TINY_CFG: Dict[str, Any] = {
    "embed_dim": 64,
    "quick_gelu": True,
    "alpha_clip": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
ASSETS = Path(__file__).parent / "assets"


@dataclass
class Scene:
    """One rendered scene: the RGB image, K exact masks ``[K, H, W]`` bool, and the objects."""

    image: Image.Image
    masks: np.ndarray
    objects: List[Dict[str, Any]]  # shape, colour, size, box [x0, y0, x1, y1], phrase
    caption: str
    background: str


def label_of(obj: Dict[str, Any]) -> str:
    """The class label ("colour shape") of an object."""
    return f"{obj['colour']} {obj['shape']}"


def _background(rng: random.Random, size: int) -> Tuple[Image.Image, str]:
    kind = rng.choice(BACKGROUNDS)

    def muted() -> Tuple[int, int, int]:
        v = rng.randint(70, 185)
        return tuple(int(np.clip(v + rng.randint(-18, 18), 0, 255)) for _ in range(3))  # type: ignore[return-value]

    a, b = np.array(muted(), np.float32), np.array(muted(), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "stripes":
        period = rng.randint(6, 16)
        theta = rng.uniform(0, math.pi)
        t = ((xx * math.cos(theta) + yy * math.sin(theta)) // (period / 2)) % 2
    elif kind == "checks":
        period = rng.randint(8, 20)
        t = ((xx // period + yy // period) % 2)
    elif kind == "noise":
        nr = np.random.default_rng(rng.randrange(2**31))
        small = nr.random((size // 8 + 1, size // 8 + 1)).astype(np.float32)
        t = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                       np.float32) / 255.0
    elif kind == "gradient":
        theta = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(theta) + yy * math.sin(theta))
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    else:  # dots
        period = rng.randint(8, 14)
        t = (((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (period / 4) ** 2).astype(
            np.float32)
    img = a * (1 - t[..., None]) + b * t[..., None]
    return Image.fromarray(img.clip(0, 255).astype(np.uint8)), kind


def _draw_shape(shape: str, box: Sequence[int], size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    if shape == "circle":
        d.ellipse([x0, y0, x1 - 1, y1 - 1], fill=1)
    elif shape == "square":
        d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=1)
    elif shape == "triangle":
        d.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=1)
    elif shape == "cross":
        w = (x1 - x0) / 3
        d.rectangle([x0 + w, y0, x1 - 1 - w, y1 - 1], fill=1)
        d.rectangle([x0, y0 + w, x1 - 1, y1 - 1 - w], fill=1)
    else:
        raise ValueError(f"shape: expected one of {SHAPES}, got {shape!r}")
    return np.asarray(canvas, dtype=bool)


def _phrase(obj: Dict[str, Any], rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"a {obj['size']} {obj['colour']} {obj['shape']}"
    return f"a {obj['colour']} {obj['shape']}"


def render_scene(seed: int, size: int = 64, max_objects: int = 4, min_objects: int = 1) -> Scene:
    """Render one scene, a pure function of ``seed``."""
    rng = random.Random(seed)
    image, kind = _background(rng, size)
    canvas = np.asarray(image).copy()
    taken: List[Tuple[int, int, int, int]] = []
    objects: List[Dict[str, Any]] = []
    masks: List[np.ndarray] = []
    want = rng.randint(min_objects, max_objects)
    for _ in range(want):
        for _attempt in range(30):
            size_name = rng.choice(tuple(SIZES))
            lo, hi = SIZES[size_name]
            side = int(round(rng.uniform(lo, hi) * size))
            x0, y0 = rng.randint(1, size - side - 1), rng.randint(1, size - side - 1)
            box = (x0, y0, x0 + side, y0 + side)
            if all(box[2] + 2 <= t[0] or t[2] + 2 <= box[0] or box[3] + 2 <= t[1] or t[3] + 2 <= box[1]
                   for t in taken):
                break
        else:
            continue
        shape, colour = rng.choice(SHAPES), rng.choice(tuple(COLOURS))
        m = _draw_shape(shape, box, size)
        rgb = np.array(COLOURS[colour], np.int32) + np.array([rng.randint(-15, 15) for _ in range(3)])
        canvas[m] = rgb.clip(0, 255).astype(np.uint8)
        taken.append(box)
        ys, xs = np.nonzero(m)
        obj = {"shape": shape, "colour": colour, "size": size_name,
               "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]}
        obj["phrase"] = _phrase(obj, rng)
        objects.append(obj)
        masks.append(m)
    order = list(range(len(objects)))
    rng.shuffle(order)
    parts = [_phrase(objects[i], rng) for i in order]
    caption = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return Scene(Image.fromarray(canvas), np.stack(masks) if masks else np.zeros((0, size, size), bool),
                 objects, caption, kind)


def scene_record(scene: Scene, key: str) -> Dict[str, Any]:
    """The shard record of a scene (schema version 1; attributes in ``meta``)."""
    regions = [{"phrase": o["phrase"], "box": o["box"], "mask": rle_encode(m), "source": "synthetic"}
               for o, m in zip(scene.objects, scene.masks)]
    meta = {"world": "alphaclip-synthetic-v1", "background": scene.background,
            "objects": [{k: o[k] for k in ("shape", "colour", "size")} for o in scene.objects]}
    return {"key": key, "width": scene.image.width, "height": scene.image.height, "caption": scene.caption,
            "regions": regions, "meta": meta}


def write_shards(folder, num_scenes: int, per_shard: int = 1000, seed: int = 0, size: int = 64,
                 quality: int = 92, progress: bool = False) -> List[Path]:
    """Render ``num_scenes`` scenes (seeds ``seed*10**7 + i``) into ``folder/shard-NNNNN.tar``."""
    from tqdm import tqdm

    folder = Path(folder)
    paths = []
    bar = tqdm(total=num_scenes, desc="scenes", disable=not progress)
    for s, start in enumerate(range(0, num_scenes, per_shard)):
        path = folder / f"shard-{s:05d}.tar"
        with ShardWriter(path) as w:
            for i in range(start, min(num_scenes, start + per_shard)):
                scene = render_scene(seed * 10**7 + i, size)
                buf = io.BytesIO()
                scene.image.save(buf, format="JPEG", quality=quality)
                w.write(buf.getvalue(), scene_record(scene, f"{i:08d}"))
                bar.update(1)
        paths.append(path)
    bar.close()
    return paths


# ------------------------------------------------------------------------------------------------ the shipped model
def load_tiny(device: str = "cpu"):
    """The shipped toy Alpha-CLIP: ``(model in eval mode, tokenizer)``. A toy for the synthetic world."""
    import open_clip

    import alphaclip_integrations.open_clip  # noqa: F401
    from alphaclip_core.checkpoints import load_state_dict_checked

    from safetensors.torch import load_file

    weights = ASSETS / "open_clip_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"the shipped toy model {weights} is missing from this installation")
    cfg = json.loads((ASSETS / "open_clip_config.json").read_text())["model_cfg"]
    from alphaclip_core.model import AlphaCLIP
    model = AlphaCLIP(**{k: v for k, v in cfg.items() if k != "alpha_clip"})
    sd = {k: v.float() for k, v in load_file(str(weights)).items()}
    load_state_dict_checked(model, sd, f"toy model {weights}")
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return model.to(device).eval(), tokenizer


def demo_scene() -> Tuple[Image.Image, np.ndarray, List[str], List[Dict[str, Any]]]:
    """The bundled demo scene: ``(image, masks [K, H, W] bool, its region labels, objects)``."""
    from alphaclip_core.alpha import rle_decode

    record = json.loads((ASSETS / "demo_scene.json").read_text())
    image = Image.open(ASSETS / "demo_scene.png").convert("RGB")
    masks = np.stack([rle_decode(r["mask"]).astype(bool) for r in record["regions"]])
    objects = record["meta"]["objects"]
    return image, masks, [label_of(o) for o in objects], objects


#: an even smaller config for tests and examples (32px, 8px patches, 16-token context)
MICRO_CFG: Dict[str, Any] = {
    "embed_dim": 32,
    "quick_gelu": True,
    "alpha_clip": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def init_model_dir(folder, cfg: Optional[Dict[str, Any]] = None, seed: int = 0) -> Path:
    """Write a random-init Alpha-CLIP of ``cfg`` (default :data:`TINY_CFG`) as an open_clip folder.

    ``open_clip.create_model("local-dir:" + str(folder))`` (after ``import alphaclip_integrations.open_clip``)
    builds it; ``alphaclip train --model local-dir:FOLDER`` trains it from scratch.
    """
    import torch

    from alphaclip_core.checkpoints import save_safetensors
    from alphaclip_core.model import AlphaCLIP

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(TINY_CFG if cfg is None else cfg)
    size = cfg["vision_cfg"]["image_size"]
    pre = {"size": [size, size], "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
           "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}, indent=2))
    if not (folder / "open_clip_model.safetensors").exists():
        g = torch.random.get_rng_state()
        torch.manual_seed(seed)
        model = AlphaCLIP(**{k: v for k, v in cfg.items() if k != "alpha_clip"})
        torch.random.set_rng_state(g)
        save_safetensors(model, folder / "open_clip_model.safetensors")
    return folder


def make_tiny(workdir, scenes: int = 10000, clip_steps: int = 1200, alpha_steps: int = 1500, batch_size: int = 128,
              clip_lr: float = 2e-3, alpha_lr: float = 1e-2, lr_ratio: float = 0.01, workers: int = 0,
              seed: int = 0, install: bool = False, threads: Optional[int] = 1) -> Dict[str, Any]:
    """Make the shipped toy model: render the world, train stage ``clip`` then stage ``alpha``.

    Writes ``workdir/data`` (shards), ``workdir/clip`` and ``workdir/alpha`` (runs); with ``install``
    copies the result (fp16) and a demo scene into the package's ``assets/``. Returns timings.
    """
    from .loop import TrainConfig, train

    work = Path(workdir)
    t0 = time.perf_counter()
    data = work / "data"
    if not (data / "done").exists():
        write_shards(data, scenes, per_shard=1000, seed=seed, progress=True)
        (data / "done").write_text("ok\n")
    t_data = time.perf_counter() - t0
    cfg_dir = init_model_dir(work / "config", TINY_CFG, seed)
    t1 = time.perf_counter()
    r1 = train(TrainConfig(data=[str(data)], output=str(work / "clip"), model=f"local-dir:{cfg_dir}",
                           stage="clip", steps=clip_steps, batch_size=batch_size, lr=clip_lr, warmup=100,
                           weight_decay=0.1, workers=workers, seed=seed, threads=threads,
                           freeze=("token_embedding",), save_every=250, log_every=25,
                           shuffle_buffer=5000))
    t2 = time.perf_counter()
    r2 = train(TrainConfig(data=[str(data)], output=str(work / "alpha"), model=f"local-dir:{work / 'clip' / 'final'}",
                           stage="alpha", steps=alpha_steps, batch_size=batch_size, lr=alpha_lr, lr_ratio=lr_ratio,
                           logit_scale=None,  # the toy base learned ~13, not OpenAI CLIP's 100: keep its own, fixed
                           warmup=50, workers=workers, seed=seed + 1, threads=threads, save_every=250, log_every=25,
                           shuffle_buffer=5000))
    t3 = time.perf_counter()
    summary = {"scenes": scenes, "data_s": round(t_data, 1), "clip_s": round(t2 - t1, 1),
               "alpha_s": round(t3 - t2, 1), "clip_loss": r1["loss"], "alpha_loss": r2["loss"],
               "clip_steps": clip_steps, "alpha_steps": alpha_steps, "batch_size": batch_size,
               "clip_lr": clip_lr, "alpha_lr": alpha_lr, "lr_ratio": lr_ratio, "seed": seed}
    if install:
        install_assets(work / "alpha" / "final")
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def install_assets(alpha_final: Path) -> None:
    """Copy a trained toy model (fp16 safetensors + config) and the demo scene into ``assets/``."""
    from safetensors.torch import load_file

    from alphaclip_core.checkpoints import save_safetensors

    ASSETS.mkdir(exist_ok=True)
    sd = load_file(str(Path(alpha_final) / "open_clip_model.safetensors"))
    save_safetensors({k: v.half() for k, v in sd.items()}, ASSETS / "open_clip_model.safetensors",
                     metadata={"format": "pt", "note": "alpha-clip toy model for the synthetic world; not for real images"})
    config = json.loads((Path(alpha_final) / "open_clip_config.json").read_text())
    (ASSETS / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    scene = render_scene(demo_seed(), 64, max_objects=4, min_objects=4)  # the training resolution
    scene.image.save(ASSETS / "demo_scene.png")
    (ASSETS / "demo_scene.json").write_text(json.dumps(scene_record(scene, "demo"), indent=1) + "\n")


#: where the search for the demo scene starts (outside every training seed range)
DEMO_SEED = 987_654_321


def demo_seed() -> int:
    """The first seed from :data:`DEMO_SEED` whose scene has 4 objects of 4 colours and 4 shapes."""
    seed = DEMO_SEED
    while True:
        objs = render_scene(seed, 64, max_objects=4, min_objects=4).objects
        if len(objs) == 4 and len({o["colour"] for o in objs}) == 4 and len({o["shape"] for o in objs}) == 4:
            return seed
        seed += 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="make the shipped toy Alpha-CLIP (synthetic world, two stages)")
    p.add_argument("workdir")
    p.add_argument("--scenes", type=int, default=10000)
    p.add_argument("--clip-steps", type=int, default=1200)
    p.add_argument("--alpha-steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--clip-lr", type=float, default=2e-3)
    p.add_argument("--alpha-lr", type=float, default=1e-2)
    p.add_argument("--lr-ratio", type=float, default=0.01)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--install", action="store_true", help="copy the result into the package's assets/")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(json.dumps(make_tiny(a.workdir, a.scenes, a.clip_steps, a.alpha_steps, a.batch_size, a.clip_lr, a.alpha_lr,
                               a.lr_ratio, a.workers, a.seed, a.install), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
