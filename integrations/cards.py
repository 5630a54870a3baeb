"""Model cards: the ``README.md`` written beside the weights alpha-clip exports.

One writer for every export: the open_clip folder (:func:`alphaclip_integrations.open_clip.save_pretrained`,
``alphaclip convert --to local-dir``), the transformers folders (:func:`~alphaclip_integrations.hf.save_hf`,
:func:`~alphaclip_integrations.hf.save_siglip_hf`, ``alphaclip convert --to hf``) and the alpha LLaVA
folder (:func:`~alphaclip_integrations.llava.convert_llava`). A card opens with the model hub's YAML
metadata block (``library_name``, ``pipeline_tag``, ``tags``, ``license``, ``base_model`` where known),
then says what the model is, how to load the folder in each framework, the alpha convention, and where
the weights and any numbers come from.

Numbers: a card quotes a published number only for a folder converted from a released reference
checkpoint (matched by its file name AND its architecture), and says it was reported by the paper,
not measured on the folder. Every other card says that no evaluation is attached. Provenance records
file names only, never the local folders they were read from.

This module imports no framework; :func:`write_model_card` keeps a ``README.md`` that is already in the
folder unless told to overwrite it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from alphaclip_core import __version__
from alphaclip_core.alpha import ALPHA_MEAN, ALPHA_STD
from alphaclip_core.checkpoints import VisionArch, atomic_write

__all__ = ["CARD_NAME", "KINDS", "PAPER_IMAGENET_S", "OPENAI_HUB_IDS", "Provenance", "Tower", "Released",
           "released_checkpoint", "model_card", "write_model_card", "tower_from_open_clip",
           "tower_from_hf_config", "card_provenance"]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

CARD_NAME = "README.md"
#: what a card can describe: an open_clip folder, a transformers Alpha-CLIP / Alpha-SigLIP folder, an alpha LLaVA
KINDS = ("open_clip", "transformers", "transformers-siglip", "llava")

#: ImageNet-S zero-shot top-1 / top-5 (919 classes, mask alpha) of each released reference checkpoint, as
#: reported by the paper (Sun et al., CVPR 2024) and its model zoo; quoted, never measured here
PAPER_IMAGENET_S: Dict[str, Tuple[str, float, float]] = {
    "clip_b16_grit1m_fultune_8xe.pth": ("GRIT-1M", 68.31, 90.31),
    "clip_l14_grit1m_fultune_8xe.pth": ("GRIT-1M", 77.22, 94.38),
    "clip_l14@336_grit1m_fultune_8xe.pth": ("GRIT-1M", 78.15, 94.86),
    "clip_b16_grit20m_fultune_2xe.pth": ("GRIT-20M", 68.89, 90.51),
    "clip_l14_grit20m_fultune_2xe.pth": ("GRIT-20M", 77.41, 94.45),
    "clip_l14_336_grit_20m_4xe.pth": ("GRIT-20M", 79.61, 95.31),
    "clip_b16_grit+mim_fultune_4xe.pth": ("GRIT-1M + MaskImageNet", 69.40, 90.74),
    "clip_l14_grit+mim_fultune_6xe.pth": ("GRIT-1M + MaskImageNet", 77.80, 94.46),
}
#: the OpenAI CLIP (hub id) each released architecture was fine-tuned from: the card's ``base_model``
OPENAI_HUB_IDS: Dict[str, str] = {
    "alpha-ViT-B-16": "openai/clip-vit-base-patch16",
    "alpha-ViT-L-14": "openai/clip-vit-large-patch14",
    "alpha-ViT-L-14-336": "openai/clip-vit-large-patch14-336",
}
#: the reference release licenses its checkpoints for research use only (CC BY-NC 4.0)
REFERENCE_LICENSE = "cc-by-nc-4.0"

CITATION = """@inproceedings{sun2024alphaclip,
  title     = {Alpha-CLIP: A CLIP Model Focusing on Wherever You Want},
  author    = {Sun, Zeyi and Fang, Ye and Wu, Tong and Zhang, Pan and Zang, Yuhang and Kong, Shu and
               Xiong, Yuanjun and Lin, Dahua and Wang, Jiaqi},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}"""


def _name(path: Optional[PathLike]) -> Optional[str]:
    return None if path is None else os.path.basename(os.fspath(path).rstrip("/\\")) or os.fspath(path)


@dataclass
class Provenance:
    """Where a folder's weights came from: what its card says about them.

    Args:
        checkpoint: the weights the folder was converted from (a file or folder; only its name is kept).
        base: the plain CLIP that supplied the text tower of a reference (visual-only) checkpoint.
        model_name: the open_clip model name of the architecture (``alpha-ViT-L-14-336``).
        llava: the LLaVA folder whose projector, language model and tokenizer an alpha LLaVA kept.
        base_model: hub id(s) of the model(s) the weights derive from (the metadata's ``base_model``);
            default: the OpenAI CLIP of a released checkpoint's architecture, else none.
        license: the weights' license as a hub license id; default: ``cc-by-nc-4.0`` for a released
            checkpoint (the reference release's terms), else ``unknown``.
        notes: more sentences for the card's "Where the weights come from" section.
        folder_name: the name the loading examples give the folder (default: the name of the folder
            written): the name it is published or moved under, e.g. when it is written to a temporary
            folder first.
    """

    checkpoint: Optional[PathLike] = None
    base: Optional[PathLike] = None
    model_name: Optional[str] = None
    llava: Optional[PathLike] = None
    base_model: Optional[Union[str, Sequence[str]]] = None
    license: Optional[str] = None
    notes: Optional[str] = None
    folder_name: Optional[str] = None

    def __post_init__(self) -> None:
        # a card may be published: keep file names, not the local folders they were read from
        self.checkpoint, self.base, self.llava = _name(self.checkpoint), _name(self.base), _name(self.llava)


@dataclass(frozen=True)
class Tower:
    """The vision tower a card describes (read off a model or config by :func:`tower_from_open_clip` /
    :func:`tower_from_hf_config`)."""

    family: str                       #: ``CLIP`` or ``SigLIP``
    image_size: int
    patch_size: int
    width: int
    layers: int
    embed_dim: Optional[int] = None   #: the joint image-text embedding size (None: a tower alone)
    timm_model: Optional[str] = None  #: the timm trunk, for timm towers

    def describe(self) -> str:
        kind = f"timm `{self.timm_model}`" if self.timm_model else "ViT"
        out = f"{kind}, width {self.width}, {self.layers} layers, patch {self.patch_size}, {self.image_size}px input"
        return out + (f", {self.embed_dim}-d embeddings" if self.embed_dim else "")

    @property
    def arch_name(self) -> Optional[str]:
        """The released architecture of this shape (``alpha-ViT-L-14-336``), or None."""
        if self.family != "CLIP" or self.timm_model:
            return None
        return VisionArch(self.width, self.patch_size, self.layers, self.image_size).name


def _side(value) -> int:
    """A square size given as ``S`` or ``(S, S)``."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def tower_from_open_clip(model) -> Tower:
    """The :class:`Tower` of an open_clip (Alpha-)CLIP / CustomTextCLIP, read off its vision tower: open_clip's
    ``VisionTransformer`` or a timm trunk (``model.visual.trunk``); SigLIP when the model has a logit bias."""
    visual = model.visual
    cfg = getattr(model, "model_cfg", None) or {}
    size = visual.image_size
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:
        width, patch, layers = trunk.patch_embed.proj.out_channels, trunk.patch_embed.patch_size, len(trunk.blocks)
    else:
        width, patch, layers = visual.conv1.out_channels, visual.patch_size, len(visual.transformer.resblocks)
    siglip = "init_logit_bias" in cfg or getattr(model, "logit_bias", None) is not None
    return Tower(family="SigLIP" if siglip else "CLIP", image_size=_side(size), patch_size=_side(patch),
                 width=int(width), layers=int(layers), embed_dim=cfg.get("embed_dim"),
                 timm_model=cfg.get("vision_cfg", {}).get("timm_model_name"))


def tower_from_hf_config(vision_config, family: str, embed_dim: Optional[int] = None) -> Tower:
    """The :class:`Tower` of a transformers vision config (``AlphaCLIPVisionConfig`` / ``AlphaSiglipVisionConfig``)."""
    return Tower(family=family, image_size=int(vision_config.image_size), patch_size=int(vision_config.patch_size),
                 width=int(vision_config.hidden_size), layers=int(vision_config.num_hidden_layers),
                 embed_dim=embed_dim)


@dataclass(frozen=True)
class Released:
    """A released reference checkpoint and the paper's ImageNet-S numbers for it."""

    file: str
    model_name: str
    tag: str
    data: str
    top1: float
    top5: float


def released_checkpoint(provenance: Optional[Provenance], tower: Tower) -> Optional[Released]:
    """The released checkpoint a folder was converted from: its file name is one of the reference release's
    AND the folder's tower has that checkpoint's architecture; else None."""
    if provenance is None or provenance.checkpoint not in PAPER_IMAGENET_S:
        return None
    from .open_clip import RELEASED  # the file names per model and tag (open_clip is a core dependency)

    for name, tags in RELEASED.items():
        for tag, (file, _) in tags.items():
            if file == provenance.checkpoint and tower.arch_name == name:
                data, top1, top5 = PAPER_IMAGENET_S[file]
                return Released(file, name, tag, data, top1, top5)
    return None


# ------------------------------------------------------------------------------------------------ the text
def _yaml(meta: Mapping[str, object]) -> str:
    """The metadata block. Written by hand: JSON-quoted scalars and block lists are YAML, and the core
    stays free of a YAML dependency; tests read it back with ``yaml.safe_load``."""
    lines = ["---"]
    for key, value in meta.items():
        if isinstance(value, (list, tuple)):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(str(v))}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines + ["---"])


def _py(code: str) -> str:
    return "```python\n" + code.strip("\n") + "\n```"


def _sh(code: str) -> str:
    return "```bash\n" + code.strip("\n") + "\n```"


_ALPHA = f"""## The alpha map

The vision tower reads, beside the RGB image, a one-channel alpha map saying where to look: 1 = the region
to focus on, 0 = background. Before the model it is resized to the input size and normalised with mean
{ALPHA_MEAN} and std {ALPHA_STD}, so **foreground is +1.9231 and background -1.9231**. "The whole image"
is an all-ones mask through the same normalisation (+1.9231 everywhere), not raw ones and not zeros. The
image and its alpha map must go through the same geometric transform (crop, pad or resize together):
the processors and `alphaclip_core.prepare` do that; if you build the tensors yourself, do the same."""


def _title(kind: str, tower: Tower, provenance: Provenance) -> str:
    family = "Alpha-SigLIP" if tower.family == "SigLIP" else "Alpha-CLIP"
    name = provenance.model_name or tower.arch_name
    what = {"open_clip": "open_clip", "transformers": "transformers", "transformers-siglip": "transformers",
            "llava": "LLaVA with an alpha vision tower"}[kind]
    return f"# {family}{' ' + name if name else ''} ({what})"


def _what(kind: str, tower: Tower, files: str) -> str:
    if kind == "llava":
        return (f"A LLaVA model whose vision tower is {'an Alpha-SigLIP' if tower.family == 'SigLIP' else 'an Alpha-CLIP'} "
                f"tower: the tower also reads an alpha map saying which region of the image to look at, so prompts "
                f"can ask about one region (region captioning, region VQA). Vision tower: {tower.describe()}. "
                f"{files}")
    family = "SigLIP" if tower.family == "SigLIP" else "CLIP"
    return (f"Alpha-{family} is {family} whose vision tower also reads an alpha map saying where to look (Alpha-CLIP, "
            f"Sun et al., CVPR 2024). One layer is added to the vision tower: a convolution over the alpha map "
            f"(`conv1_alpha`, patch-sized, no bias) whose output is added to the RGB patch embedding; nothing else "
            f"changes, and the text tower is the base {family}'s. With that layer at zero the model computes exactly "
            f"its base. Vision tower: {tower.describe()}. {files}")


def _loading(kind: str, tower: Tower, folder: str, text_processor: bool, mode: str) -> List[str]:
    siglip = tower.family == "SigLIP"
    out = ["## How to load it", "",
           f"`folder` below is this folder: a local path, or (transformers) the hub repository it was uploaded to. "
           f"Every example needs alpha-clip (`pip install alpha-clip`, with the `[hf]` / `[llava]` extra for "
           f"transformers / LLaVA). The box is `x0, y0, x1, y1` in the image's pixels; masks work too.", ""]
    if kind == "open_clip":
        out += ["### open_clip", "", _py(f'''
import open_clip
import torch
from PIL import Image

import alphaclip_integrations.open_clip  # noqa: F401  (open_clip builds the alpha model of this folder's config)
from alphaclip_core import prepare
from alphaclip_core.regions import preprocess_params

folder = "{folder}"  # on a hub: open_clip.create_model("hf-hub:USER/REPO") reads the same two files
model = open_clip.create_model("local-dir:" + folder).eval()
image, alpha = prepare(Image.open("photo.jpg"), box=[40, 30, 200, 180], mode="{mode}", **preprocess_params(model))
with torch.no_grad():
    features = model.encode_image(image, alpha)  # [regions, {tower.embed_dim or "D"}]
''')]
        if not siglip:
            out += ["", "Zero-shot classification of regions (the text tower is the base CLIP's):", "", _py('''
from alphaclip_core import classify_regions

tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
scores = classify_regions(model, tokenizer, Image.open("photo.jpg"), ["cat", "dog"], box=[[40, 30, 200, 180]])
print(scores.table())
''')]
        out += ["", "### transformers", "", "Convert the folder once (it gets its own card), then load it as in "
                "transformers:", "", _py(f'''
from transformers import AutoModel

from alphaclip_integrations.hf import convert_to_hf

convert_to_hf(model, folder + "-hf"{", tokenizer=open_clip.get_tokenizer('local-dir:' + folder)" if siglip else ""})
hf_model = AutoModel.from_pretrained(folder + "-hf")  # {"AlphaSiglipModel" if siglip else "AlphaCLIPModel"}
''')]
        tower_file = f"{folder}/open_clip_model.safetensors"
    else:
        cls = "AlphaSiglipModel" if siglip else "AlphaCLIPModel"
        out += ["### transformers", "", _py(f'''
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

import alphaclip_integrations.hf  # noqa: F401  (registers {"Alpha-SigLIP" if siglip else "Alpha-CLIP"} with the Auto classes)

folder = "{folder}"
model = AutoModel.from_pretrained(folder).eval()  # {cls}
image_processor = AutoImageProcessor.from_pretrained(folder)
inputs = image_processor(Image.open("photo.jpg"), boxes=[[40, 30, 200, 180]])  # pixel_values + alpha_values
with torch.no_grad():
    features = model.get_image_features(**inputs).pooler_output  # [regions, {tower.embed_dim or "D"}]
''')]
        if text_processor:
            score = "torch.sigmoid(out.logits_per_image))  # [regions, texts]; SigLIP: independent probabilities" \
                if siglip else "out.logits_per_image.softmax(-1))  # [regions, texts]"
            out += ["", "Regions against texts:", "", _py(f'''
from transformers import AutoProcessor

processor = AutoProcessor.from_pretrained(folder)
inputs = processor(images=Image.open("photo.jpg"), boxes=[[40, 30, 200, 180]],
                   text=["a photo of a cat.", "a photo of a dog."])
with torch.no_grad():
    out = model(**inputs)
print({score}
''')]
        out += ["", "Without alpha-clip installed, `AutoModel.from_pretrained(folder, trust_remote_code=True)` loads the "
                "model from the code stored in this folder; then build `pixel_values` and `alpha_values` yourself "
                "(see the alpha map below).", "", "### open_clip", "", _py('''
from alphaclip_integrations.hf import load_open_clip_from_hf

oc_model = load_open_clip_from_hf(folder)  # the same weights as an open_clip model
''')]
        tower_file = "tower.safetensors"
        out += ["", "or, on the command line, "
                f"`alphaclip convert {folder} --to local-dir -o {folder}-open_clip` (an open_clip folder)."]
    out += ["", "### LLaVA", "", "A transformers LLaVA whose vision tower has this architecture (LLaVA-1.5: CLIP "
            "ViT-L/14 at 336px) gets this tower, keeping its projector, language model and tokenizer; fine-tune "
            "after the swap, as the paper does:", ""]
    if kind == "open_clip":
        out += [_sh(f"python -m alphaclip_integrations.llava convert LLAVA_FOLDER {tower_file} -o alpha-llava")]
    else:
        out += [_sh(f"alphaclip convert {folder} --to open_clip -o {tower_file}\n"
                    f"python -m alphaclip_integrations.llava convert LLAVA_FOLDER {tower_file} -o alpha-llava")]
    return out


def _loading_llava(folder: str, text_processor: bool) -> List[str]:
    out = ["## How to load it", "", "`folder` below is this folder: a local path or the hub repository it was "
           "uploaded to. It needs alpha-clip with its LLaVA extra (`pip install \"alpha-clip[llava]\"`).", ""]
    if text_processor:
        out += [_py(f'''
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import alphaclip_integrations.llava  # noqa: F401  (registers model_type "alpha_llava" with the Auto classes)

folder = "{folder}"
model = AutoModelForImageTextToText.from_pretrained(folder)
processor = AutoProcessor.from_pretrained(folder)
image = Image.open("photo.jpg")
# one region of the image (masks= takes an HxW mask); the prompt format is the LLaVA's (llava-1.5's here)
inputs = processor(images=image, text="USER: <image>\\nDescribe the region. ASSISTANT:", boxes=[40, 30, 200, 180])
out = model.generate(**inputs, max_new_tokens=40)
print(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
''')]
    else:
        out += [_py(f'''
from transformers import AutoModelForImageTextToText

import alphaclip_integrations.llava  # noqa: F401  (registers model_type "alpha_llava" with the Auto classes)

folder = "{folder}"
model = AutoModelForImageTextToText.from_pretrained(folder)
'''), "", "This folder has no processor (its LLaVA folder had no tokenizer): build the inputs with an "
                "`AlphaLlavaProcessor` (`alphaclip_integrations.llava`) and the LLaVA's tokenizer."]
    out += ["", "`alpha_values` (`[N, 1, H, W]`, one normalised alpha map per image row) reaches the vision tower "
            "and nothing else; omitted, every image is seen whole."]
    return out


def _provenance(kind: str, tower: Tower, provenance: Provenance, released: Optional[Released]) -> List[str]:
    out = ["## Where the weights and numbers come from", ""]
    p = provenance
    if p.checkpoint:
        src = f"converted with alpha-clip {__version__} from `{p.checkpoint}`"
        if p.base:
            src += f", with the text tower of `{p.base}`"
        if kind == "llava":
            src = (f"an alpha LLaVA made with alpha-clip {__version__}: the vision tower from `{p.checkpoint}`"
                   + (f" (text tower file `{p.base}`)" if p.base else "")
                   + (f", everything else (projector, language model, LM head, tokenizer) from `{p.llava}`" if p.llava
                      else ""))
        out.append(f"These weights were {src}.")
    elif kind == "llava" and p.llava:
        out.append(f"An alpha LLaVA made with alpha-clip {__version__} from `{p.llava}`: its own vision tower with "
                   f"a zero alpha convolution, so it computes exactly what `{p.llava}` computes until fine-tuned.")
    else:
        out.append(f"Written by alpha-clip {__version__}; where these weights came from (a released checkpoint, a "
                   "training run, a base model) was not recorded when the folder was written. Add it here before "
                   "publishing.")
    if p.notes:
        out += ["", p.notes]
    out.append("")
    if released is not None and kind != "llava":
        out += [f"`{released.file}` is a released Alpha-CLIP checkpoint (open_clip: `{released.model_name}`, "
                f"pretrained tag `{released.tag}`), trained on {released.data}. **Reported by the paper** (not "
                "measured on this folder), ImageNet-S zero-shot with mask alpha (919 classes, mean per-class "
                "accuracy):", "", "| checkpoint | top-1 | top-5 |", "|---|---|---|",
                f"| `{released.file}` | {released.top1:.2f} | {released.top5:.2f} |", "",
                "A conversion keeps every weight, so this folder should reproduce them; `alphaclip eval imagenet-s` "
                "measures them on your copy of ImageNet-S."]
    elif released is not None:
        out += [f"The vision tower is the released Alpha-CLIP checkpoint `{released.file}` (trained on "
                f"{released.data}; the paper reports {released.top1:.2f} top-1 ImageNet-S zero-shot for it, as a "
                "CLIP model, not as part of this LLaVA). The paper's region-captioning results come from a LLaVA "
                "fine-tuned after the swap; this folder is the swap before fine-tuning, and no numbers were measured "
                "for it."]
    else:
        out.append("No evaluation numbers are attached: none were measured for these weights when this folder was "
                   "written. `alphaclip eval` measures ImageNet-S and referring-expression accuracy"
                   + (" (for the CLIP tower)" if kind == "llava" else "") + ".")
    return out


def _license_text(license: str, released: Optional[Released], kind: str) -> List[str]:
    out = ["## License", ""]
    if released is not None:
        out.append("The reference release licenses its checkpoints for research use only (CC BY-NC 4.0); the text "
                   "tower comes from OpenAI's CLIP (MIT)."
                   + (" The LLaVA parts carry the LLaVA folder's own license." if kind == "llava" else ""))
    elif license == "unknown":
        out.append("The license of these weights is that of what they were made from (the base model, the training "
                   "data, the converted checkpoint): set `license:` in the metadata above before publishing.")
    else:
        out.append(f"`{license}`, as given when the folder was written.")
    return out


def model_card(kind: str, tower: Tower, provenance: Optional[Provenance] = None, *, folder: str = "path/to/folder",
               text_processor: bool = True, mode: Optional[str] = None) -> str:
    """The card (Markdown with the hub's YAML metadata block) of an exported folder.

    Args:
        kind: one of :data:`KINDS`.
        tower: the vision tower (:func:`tower_from_open_clip`, :func:`tower_from_hf_config`).
        provenance: where the weights came from (None: not recorded, and the card says so).
        folder: the folder's name, used in the loading examples (``provenance.folder_name`` wins).
        text_processor: the folder holds a text processor (tokenizer); otherwise the examples use images only.
        mode: the paired transform's geometry the examples use (default: ``squash`` for SigLIP, else ``crop``).
    Returns:
        the card's text.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    p = provenance or Provenance()
    folder = p.folder_name or folder
    released = released_checkpoint(p, tower)
    siglip = tower.family == "SigLIP"
    base_model = p.base_model
    if base_model is None and released is not None and kind != "llava":
        base_model = OPENAI_HUB_IDS[released.model_name]
    license = p.license or (REFERENCE_LICENSE if released is not None and kind != "llava" else "unknown")
    tags = ["alpha-clip", "siglip" if siglip else "clip", "region", "vision"]
    tags += {"open_clip": ["open_clip"], "transformers": ["transformers"],
             "transformers-siglip": ["transformers"], "llava": ["llava", "image-text-to-text"]}[kind]
    meta: Dict[str, object] = {
        "library_name": "open_clip" if kind == "open_clip" else "transformers",
        "pipeline_tag": "image-text-to-text" if kind == "llava" else "zero-shot-image-classification",
        "license": license,
        "tags": tags,
    }
    if base_model:
        meta["base_model"] = [base_model] if isinstance(base_model, str) else list(base_model)
    files = {"open_clip": "This folder is an open_clip model: `open_clip_config.json` + `open_clip_model.safetensors`.",
             "transformers": "This folder is a transformers model (`config.json`, `model.safetensors`, the modeling "
                             "code for `trust_remote_code`, the processor).",
             "transformers-siglip": "This folder is a transformers model (`config.json`, `model.safetensors`, the "
                                    "modeling code for `trust_remote_code`, the processor).",
             "llava": "This folder is a transformers model (`config.json`, the weights, the processor)."}[kind]
    mode = mode or ("squash" if siglip else "crop")
    parts = [_yaml(meta), "", _title(kind, tower, p), "", _what(kind, tower, files), ""]
    parts += _loading_llava(folder, text_processor) if kind == "llava" else \
        _loading(kind, tower, folder, text_processor, mode)
    parts += ["", _ALPHA, ""]
    parts += _provenance(kind, tower, p, released)
    parts += [""] + _license_text(license, released, kind)
    parts += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(parts)


def card_provenance(card: Union[bool, Provenance, None]) -> Optional[Provenance]:
    """The ``card`` argument of the exporters: ``True`` (a card, provenance not recorded) -> ``Provenance()``,
    a :class:`Provenance` -> itself, ``False`` / ``None`` -> None (no card)."""
    if card is True:
        return Provenance()
    if card is False or card is None:
        return None
    if isinstance(card, Provenance):
        return card
    raise TypeError(f"card: expected True, False or an alphaclip_integrations.cards.Provenance, got {card!r}")


def write_model_card(folder: PathLike, text: str, *, overwrite: bool = False) -> Optional[Path]:
    """Write ``text`` as ``folder/README.md`` (atomically). A ``README.md`` already there is kept (returns
    None, logged) unless ``overwrite``: a card the user wrote is never lost to a re-export."""
    path = Path(folder) / CARD_NAME
    if path.exists() and not overwrite:
        logger.info("kept the existing %s (pass overwrite_card=True / --card overwrite to replace it)", path)
        return None

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)
    logger.info("wrote the model card %s", path)
    return path
